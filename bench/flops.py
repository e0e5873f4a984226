#!/usr/bin/env python3
"""A caption's FLOPs against the CPU's own limit (issue 40): how near the hardware ZeroCap runs.

GPT-2 medium + CLIP ViT-B/32 with random weights (bench/benchmark.py's real_size_models: timing
does not depend on weight values), the paper's defaults (beam 5, 5 iterations, top 512), --tokens
tokens, one image, on the CPU:

  - the matmul and convolution FLOPs one caption executes, backward passes included
    (torch.utils.flop_counter: what a GPU or a BLAS would have to do; elementwise work not counted),
    by operator, and a token's share;
  - the caption's time without the counter (median of --repeats), hence its GFLOP/s;
  - the machine's own fp32 rate on the same threads: a --mm x --mm torch.mm (median of 20);
  - the caption's rate as a share of that rate: the gap says what is left to win;
  - the same, region by region (the engine's named regions, `zerocap.clip_candidates` etc.: the
    FLOPs in a counted run, the time in an uncounted one): where the rate is lost. The time
    outside the regions (the loss, the top-k, the token rules, the beam search, Python) has no
    matmul FLOPs at all.

    python bench/flops.py [--tokens 3] [--repeats 3] [--results bench/RESULTS.md | '']
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import datetime
import os
import statistics
import sys
import time
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:0] = [ROOT, HERE]
warnings.filterwarnings("ignore")

import zerocap  # noqa: E402,F401,I001 -- before torch, as the command line: how idle OpenMP workers wait
import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from benchmark import random_images, real_size_models  # noqa: E402
from machine import append, cpu_model  # noqa: E402
from zerocap import ZeroCap, ZeroCapConfig  # noqa: E402


def mm_rate(n: int, repeats: int = 20) -> float:
    """GFLOP/s of an n x n fp32 torch.mm on this process's threads (median of `repeats`)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - start)
    return 2 * n ** 3 / statistics.median(times) / 1e9


REGION_MODULES = ("zerocap.batch", "zerocap.context_shift", "zerocap.lm", "zerocap.scorer")  # their record_function


@contextlib.contextmanager
def regions(count: bool):
    """(FLOPs, seconds) by named region while inside: each module's `record_function` replaced by a
    region that times itself and, with `count`, counts its FLOPs in a FlopCounterMode of its own."""
    flops, seconds = collections.Counter(), collections.Counter()

    @contextlib.contextmanager
    def region(name):
        start = time.perf_counter()
        if count:
            with FlopCounterMode(display=False) as counter:
                yield
            flops[name] += counter.get_total_flops()
        else:
            yield
        seconds[name] += time.perf_counter() - start

    kept = {m: sys.modules[m].record_function for m in REGION_MODULES}
    for m in kept:
        sys.modules[m].record_function = region
    try:
        yield flops, seconds
    finally:
        for m, fn in kept.items():
            sys.modules[m].record_function = fn


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--mm", type=int, default=2048, help="the matmul's size (n x n by n x n)")
    p.add_argument("--results", default=os.path.join(HERE, "RESULTS.md"), help="append the table here ('' = don't)")
    args = p.parse_args()
    device = torch.device("cpu")
    lm, tok, clip_model, preprocess = real_size_models(device)
    zc = ZeroCap(lm, tok, clip_model, preprocess, device=device)
    cfg = ZeroCapConfig(max_tokens=args.tokens)
    image = random_images(1)[0]
    zc.caption([image], config=cfg)  # warm-up (allocator, thread pool)

    with FlopCounterMode(display=False) as counter, regions(count=True) as (region_flops, _):
        zc.caption([image], config=cfg)
    by_op = {str(op).split(".")[-1]: n for op, n in counter.get_flop_counts().get("Global", {}).items()}
    total = counter.get_total_flops()

    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        zc.caption([image], config=cfg)
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    with regions(count=False) as (_, region_seconds):  # one more caption, its regions timed
        start = time.perf_counter()
        zc.caption([image], config=cfg)
        timed_caption = time.perf_counter() - start
    rate = total / seconds / 1e9
    limit = mm_rate(args.mm)

    ops = ", ".join(f"{op} {n / 1e9:.0f}" for op, n in sorted(by_op.items(), key=lambda kv: -kv[1]))
    table = (f"\n## FLOPs at real sizes against the CPU's own matmul rate (bench/flops.py), {datetime.date.today()}\n\n"
             f"{cpu_model()}, "
             f"{torch.get_num_threads()} threads, torch {torch.__version__}; GPT-2 medium + CLIP ViT-B/32, random "
             f"weights, fp32, the paper's defaults, {args.tokens} tokens, one image; median of {args.repeats}.\n\n"
             f"| what | value |\n| --- | ---: |\n"
             f"| matmul + convolution FLOPs a caption (forward and backward) | {total / 1e9:,.0f} GFLOP |\n"
             f"| a token's share | {total / 1e9 / args.tokens:,.0f} GFLOP |\n"
             f"| a caption's time | {seconds:.2f} s ({seconds / args.tokens:.2f} s a token) |\n"
             f"| its rate | {rate:.1f} GFLOP/s |\n"
             f"| this CPU's fp32 matmul rate ({args.mm}² torch.mm, same threads) | {limit:.1f} GFLOP/s |\n"
             f"| the caption's share of it | {100 * rate / limit:.0f} % |\n\n"
             f"By operator (GFLOP): {ops}.\n\n"
             f"By region (one more caption, {timed_caption:.2f} s; the FLOPs from the counted run):\n\n"
             f"| region | GFLOP | s | GFLOP/s | share of the matmul rate |\n| --- | ---: | ---: | ---: | ---: |\n"
             + "".join(f"| {name} | {region_flops[name] / 1e9:,.1f} | {region_seconds[name]:.2f} | "
                       f"{region_flops[name] / 1e9 / region_seconds[name]:.1f} | "
                       f"{100 * region_flops[name] / 1e9 / region_seconds[name] / limit:.0f} % |\n"
                       for name in sorted(region_seconds, key=lambda n: -region_seconds[n]))
             + f"| outside the regions | {(total - sum(region_flops.values())) / 1e9:,.1f} | "
               f"{timed_caption - sum(region_seconds.values()):.2f} | | |\n")
    print(table)
    append(args.results, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
