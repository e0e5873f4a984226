#!/usr/bin/env python3
"""ZeroCap speed benchmark: the engine against the literal reference decoder, in one run.

Random-weight models (timing does not depend on weight values), no downloads:
  default   GPT-2 medium (24 layers x 1024, 16 heads) and CLIP ViT-B/32, on the GPU if there is one
  --tiny    the tests' tiny models, on the CPU: a smoke run

At the paper's defaults (beam 5, 5 iterations, top 512, 15 tokens) it reports s/caption and
s/token for the engine and the reference, their ratio, peak GPU memory, captions/s for a batch of
images, and whether the beams matched; and appends a table to bench/RESULTS.md.

    python bench/benchmark.py --tiny                 # CPU smoke run (a few minutes)
    python bench/benchmark.py                        # real sizes, on one GPU
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
import tempfile
import time
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]
warnings.filterwarnings("ignore")

import zerocap  # noqa: E402,F401,I001 -- before torch, as the command line and the container: how idle OpenMP workers wait
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from machine import append, cpu_model  # noqa: E402
from zerocap import ZeroCap, ZeroCapConfig  # noqa: E402
from zerocap.loading import quiet_transformers  # noqa: E402


def random_images(n: int, size: int = 256) -> list[Image.Image]:
    g = torch.Generator().manual_seed(0)
    return [Image.fromarray(torch.randint(0, 256, (size, size, 3), generator=g, dtype=torch.uint8).numpy())
            for _ in range(n)]


def real_size_models(device: torch.device):
    """GPT-2 medium and CLIP ViT-B/32 architectures with random weights, as clip.load gives them."""
    from clip.clip import _transform
    from clip.model import CLIP, convert_weights
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2Tokenizer

    torch.manual_seed(0)
    fixtures = os.path.join(ROOT, "tests", "fixtures")
    tok = GPT2Tokenizer(os.path.join(fixtures, "vocab.json"), os.path.join(fixtures, "merges.txt"))
    lm = GPT2LMHeadModel(GPT2Config(n_layer=24, n_embd=1024, n_head=16)).to(device)
    clip_model = CLIP(embed_dim=512, image_resolution=224, vision_layers=12, vision_width=768, vision_patch_size=32,
                      context_length=77, vocab_size=49408, transformer_width=512, transformer_heads=8,
                      transformer_layers=12)
    if device.type == "cuda":
        convert_weights(clip_model)  # fp16, as clip.load does on a GPU
    return lm, tok, clip_model.to(device).eval(), _transform(224)


def tiny_models(device: torch.device):
    from tiny_models import write_weights
    from zerocap.loading import load_models

    root = write_weights(tempfile.mkdtemp(prefix="zerocap-bench-"))
    lm, tok, scorer, _ = load_models(os.path.join(root, "gpt2-medium"), os.path.join(root, "clip", "ViT-B-32.pt"),
                                     device=device)
    return lm, tok, scorer.clip, scorer.preprocess


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device):
    sync(device)
    t = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - t


# aten ops that only make views or read metadata (no kernel on a GPU)
VIEW_OPS = {"view", "reshape", "_unsafe_view", "transpose", "t", "permute", "select", "slice", "narrow", "expand",
            "unsqueeze", "squeeze", "split", "chunk", "unbind", "as_strided", "detach", "detach_", "alias",
            "lift_fresh", "contiguous", "flatten", "empty", "empty_like", "empty_strided", "resolve_conj",
            "resolve_neg", "result_type", "to", "_to_copy", "dropout", "item", "_local_scalar_dense", "is_nonzero"}


def compute_ops(events) -> dict[str, int]:
    """Innermost non-view aten ops by engine region ("" = none): a device-independent count of
    the kernels a GPU would launch."""
    def is_compute(e):
        return e.name.startswith("aten::") and e.name[6:] not in VIEW_OPS

    counts: dict[str, int] = {}
    for e in events:
        if is_compute(e) and not any(is_compute(c) for c in e.cpu_children):
            p = e.cpu_parent
            while p is not None and not p.name.startswith("zerocap."):
                p = p.cpu_parent
            region = p.name if p is not None else ""
            counts[region] = counts.get(region, 0) + 1
    return counts


def profile_caption(zc: ZeroCap, image, cfg: ZeroCapConfig, device) -> str:
    """Where one caption's time goes: the engine's named regions (torch.profiler), as a table."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        _, wall = timed(lambda: zc.caption([image], config=cfg), device)
    events = prof.key_averages()
    regions = sorted((e for e in events if e.key.startswith("zerocap.")), key=lambda e: -e.cpu_time_total)
    launches = sum(e.count for e in events if "LaunchKernel" in e.key)
    kernel_ms = sum(getattr(e, "self_device_time_total", 0) for e in events) / 1e3
    ops = compute_ops(prof.events())
    lines = [f"Profile of one caption ({zc.form.name} form; the profiler adds overhead): "
             f"{wall:.3f} s wall, {sum(ops.values())} compute ops (innermost non-view aten ops), "
             f"{launches} kernel launches, {kernel_ms:.1f} ms of GPU kernels.\n",
             "| region | calls | compute ops | CPU ms (incl. waits) | GPU ms |", "| --- | ---: | ---: | ---: | ---: |"]
    for e in regions:
        lines.append(f"| {e.key} | {e.count} | {ops.get(e.key, 0)} | {e.cpu_time_total / 1e3:.1f} | "
                     f"{getattr(e, 'device_time_total', 0) / 1e3:.1f} |")
    rest = wall * 1e3 - sum(e.cpu_time_total for e in regions) / 1e3
    lines.append(f"| everything else (token rules, beams, rerank, ...) | | {ops.get('', 0)} | {rest:.1f} | |")
    return "\n".join(lines) + "\n"


def concurrency_rows(zc: ZeroCap, images, cfg: ZeroCapConfig, levels: list[int], device) -> str:
    """Captions/s with `c` clients each sending its next request as soon as its answer arrives, the
    scheduler decoding whatever is in flight together (continuous batching): 2c requests per level."""
    from zerocap.modes import Target
    from zerocap.scheduler import Scheduler

    targets = [Target(zc.targets.image_target(im), f"image {i}") for i, im in enumerate(images)]
    cfg = zc.check(cfg)
    lines = ["| clients in flight | requests | seconds | captions/s | mean batch shared | mean wait s |",
             "| ---: | ---: | ---: | ---: | ---: | ---: |"]
    for c in levels:
        scheduler = Scheduler(zc, max_batch=c)
        zc.warm_up(cfg, c)  # a compiled step's shapes for c requests (eager: first-call caches)
        n = 2 * c
        tickets, done = [], 0
        sync(device)
        start = time.perf_counter()
        for i in range(n):
            if len(tickets) - done >= c:  # a client waits for its answer before it sends again
                tickets[done].result()
                done += 1
            tickets.append(scheduler.submit(zc.request(targets[i % len(targets)], cfg)))
        for t in tickets:
            t.result()
        sync(device)
        seconds = time.perf_counter() - start
        scheduler.close()
        shared = sum(t.batch_size for t in tickets) / n
        waited = sum(t.waited for t in tickets) / n
        lines.append(f"| {c} | {n} | {seconds:.2f} | {n / seconds:.2f} | {shared:.1f} | {waited:.2f} |")
        print(lines[-1], flush=True)
    return "\n".join(lines) + "\n"


SMALL = dict(max_tokens=3, beam_size=2, top_k=32)  # the light requests
HEAVY = dict(beam_size=6, top_k=256, max_tokens=20, num_iterations=6)  # ... and its heavy one
OTHER = dict(beam_size=3, top_k=24, num_iterations=4, fusion_factor=0.95, grad_norm_factor=0.8)  # other settings, a like cost


def _clients(zc, scheduler, targets, cfgs_for, clients: int, per_client: int, ends: list | None = None) -> list[float]:
    """Closed loop: each client sends its next request when its answer arrives; the latencies
    (and, into `ends`, when each was answered)."""
    import threading

    latencies, lock = [], threading.Lock()

    def client(c):
        for i in range(per_client):
            cfg = cfgs_for(c * per_client + i)
            start = time.perf_counter()
            scheduler.submit(zc.request(targets[(c + i) % len(targets)], cfg)).result()
            with lock:
                latencies.append(time.perf_counter() - start)
                if ends is not None:
                    ends.append(time.perf_counter())

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies


def _pct(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def mixed_rows(zc: ZeroCap, images, device, clients: int = 5, per_client: int = 8) -> str:
    """Requests of other settings among the default ones (one engine, one scheduler): throughput
    and latency by share of other settings; light requests' latency with a heavy one in flight."""
    from zerocap.modes import Target
    from zerocap.scheduler import Scheduler

    targets = [Target(zc.targets.image_target(im), f"image {i}") for i, im in enumerate(images)]
    small, heavy, other = (zc.check(zc.config("caption", **k)) for k in (SMALL, HEAVY, {**SMALL, **OTHER}))
    lines = ["| share of other settings | requests | captions/min | vs all alike | p50 s | p95 s |",
             "| ---: | ---: | ---: | ---: | ---: | ---: |"]
    base = None
    for share in (0.0, 0.3, 0.5):
        scheduler = Scheduler(zc, max_batch=8)
        every = round(1 / share) if share else 0
        start = time.perf_counter()
        lat = _clients(zc, scheduler, targets, lambda i: other if every and i % every == 0 else small, clients,
                       per_client)
        seconds = time.perf_counter() - start
        scheduler.close()
        rate = 60 * len(lat) / seconds
        base = base or rate
        lines.append(f"| {share:.0%} | {len(lat)} | {rate:.0f} | {rate / base:.0%} | {_pct(lat, 0.5):.2f} |"
                     f" {_pct(lat, 0.95):.2f} |")
        print(lines[-1], flush=True)
    # a heavy request among light ones
    scheduler = Scheduler(zc, max_batch=8)
    alone_start = time.perf_counter()
    scheduler.submit(zc.request(targets[0], heavy)).result()
    heavy_alone = time.perf_counter() - alone_start
    baseline = _clients(zc, scheduler, targets, lambda i: small, clients, per_client)
    ticket, ends, heavy_end = scheduler.submit(zc.request(targets[0], heavy)), [], []
    ticket.add_done_callback(lambda t: heavy_end.append(time.perf_counter()))
    beside = _clients(zc, scheduler, targets, lambda i: small, clients, per_client, ends)
    ticket.result()
    scheduler.close()
    during = sum(1 for end in ends if end < heavy_end[0])
    lines.append("")
    lines.append(f"A heavy request (beam 6, top-k 256, 20 tokens, 6 iterations; {heavy_alone:.2f} s alone) sent among"
                 f" {clients} clients of light ones (beam 2, top-k 32, 3 tokens): light p50 {_pct(baseline, 0.5):.2f} s"
                 f" without it, {_pct(beside, 0.5):.2f} s beside it ({_pct(beside, 0.5) / _pct(baseline, 0.5):.1f}x;"
                 f" p95 {_pct(baseline, 0.95):.2f} -> {_pct(beside, 0.95):.2f} s); {during} of the {len(beside)}"
                 " light requests finished while it decoded.")
    print(lines[-1], flush=True)
    return "\n".join(lines) + "\n"


def lone_rows(zc: ZeroCap, images, cfg: ZeroCapConfig, device, sizes=(1, 8, 16)) -> str:
    """A lone request in a container sized for 1, 8, 16 predictions (compiled: the static layout
    steps the smallest size that holds it, lm.step_size); the first caption compiles, the second
    is timed."""
    from zerocap.modes import Target
    from zerocap.scheduler import Scheduler

    target = Target(zc.targets.image_target(images[0]), "image 0")
    cfg = zc.check(cfg)
    lines = ["| container sized for | slots stepped | s/caption | vs sized for 1 |", "| ---: | ---: | ---: | ---: |"]
    first = None
    for m in sizes:
        scheduler = Scheduler(zc, max_batch=m)
        scheduler.caption(zc.request(target, cfg))  # compiles this size
        sync(device)
        start = time.perf_counter()
        ticket = scheduler.submit(zc.request(target, cfg))
        ticket.result()
        sync(device)
        seconds = time.perf_counter() - start
        slots = ticket.lane.batch.state.size([ticket.request]) if zc.compiled is not None else cfg.beam_size
        scheduler.close()
        first = first or seconds
        lines.append(f"| {m} | {slots} | {seconds:.3f} | {seconds / first:.2f}x |")
        print(lines[-1], flush=True)
    return "\n".join(lines) + "\n"


def pseudo_token_rows(lm, tok, clip_model, preprocess, device, images, sentences: int, tokens: int,
                      reference: bool, exact: bool, together: int = 4, repeats: int = 3) -> str:
    """The pseudo-token method (their README's defaults but `sentences` sentences of at most `tokens`
    tokens): their code (tests/reference_pseudo_tokens.py), the fast form alone and `together`
    requests at once, the exact form; whether each gave their sentences, captions and beams. The
    fast form's rows are the median of `repeats` runs (a run is seconds: one run is at the mercy of
    a busy machine's moment; their code's and the exact form's single runs last tens of seconds)."""
    import copy

    from zerocap.modes import Target
    from zerocap.pseudo_tokens import PseudoTokenConfig

    cfg = PseudoTokenConfig(sentence_iterations=sentences, max_tokens=tokens)
    fast = ZeroCap(lm, tok, clip_model, preprocess, device=device)
    targets = [Target(fast.targets.image_target(im), f"image {i}") for i, im in enumerate(images[:together])]
    fast.pseudo_tokens.decode(targets[:1], cfg.replace(sentence_iterations=1, max_tokens=2))  # tables, kernels

    def outputs(r):
        return [s.text for s in r.sentences], r.best_clip, r.best_mixed, [b.text for b in r.beams]

    rows, want = [], None
    if reference:
        from reference_pseudo_tokens import CLIPTextGenerator, reference_args

        gen = CLIPTextGenerator(lm, copy.deepcopy(tok), clip_model, device=device, **reference_args(cfg))
        (by_clip, by_mixed, texts, beams), ref_seconds = timed(lambda: gen.generate(targets[0].vector[None]), device)
        want = (texts, by_clip[0], by_mixed[0], beams)
        print(f"pseudo-tokens, their code: {ref_seconds:.2f} s", flush=True)
    def median(fn):  # (the last run's output, the median seconds of `repeats` runs)
        runs = [timed(fn, device) for _ in range(max(1, repeats))]
        return runs[-1][0], sorted(sec for _, sec in runs)[len(runs) // 2]

    (res,), seconds = median(lambda: fast.pseudo_tokens.decode(targets[:1], cfg))
    n = res.tokens
    print(f"pseudo-tokens, fast: {seconds:.2f} s ({n} tokens)", flush=True)
    same = "—" if want is None else ("yes" if outputs(res) == want else "no")
    rows.append(("engine, fast form, 1 request", seconds, seconds / n, ref_seconds / seconds if want else None, same))
    if exact:
        zc = ZeroCap(lm, tok, clip_model, preprocess, device=device, form="exact")
        (res_e,), exact_seconds = timed(lambda: zc.pseudo_tokens.decode(targets[:1], cfg), device)
        same_e = "—" if want is None else ("yes" if outputs(res_e) == want else "no")
        rows.append(("engine, exact form, 1 request", exact_seconds, exact_seconds / n,
                     ref_seconds / exact_seconds if want else None, same_e))
    if want is not None:
        rows.append(("their code (tests/reference_pseudo_tokens.py)", ref_seconds, ref_seconds / n, 1.0, "—"))
    alone, one_by_one = [], 0.0
    for t in targets:
        (r,), sec = median(lambda t=t: fast.pseudo_tokens.decode([t], cfg))
        alone.append(outputs(r))
        one_by_one += sec
    many, at_once = median(lambda: fast.pseudo_tokens.decode(targets, cfg))
    same_many = "yes" if [outputs(r) for r in many] == alone else "no"
    table = ("| pseudo-tokens | s/request | s/token | speed-up vs their code | = their outputs |\n"
             "| --- | ---: | ---: | ---: | --- |\n"
             + "".join(f"| {a} | {b:.3f} | {c:.4f} | {'' if d is None else f'{d:.1f}x'} | {e} |\n"
                       for a, b, c, d, e in rows))
    table += (f"\n{len(targets)} requests together (fast form): {at_once:.2f} s, against {one_by_one:.2f} s one after"
              f" another ({one_by_one / at_once:.2f}x); each with its output alone: {same_many}.\n")
    return (f"\nEvolving pseudo-tokens (their README's defaults, {sentences} sentences of at most {tokens} tokens,"
            " one image; outputs = their sampled sentences, best captions and beams):\n\n" + table)


def machine(device) -> str:
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "none"
    return f"{cpu_model()}, {os.cpu_count()} CPUs; GPU: {gpu}; torch {torch.__version__}; Python {platform.python_version()}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="tiny models on the CPU (smoke run)")
    p.add_argument("--device", default=None, help="default: cuda if available (cpu with --tiny)")
    p.add_argument("--tokens", type=int, default=15)
    p.add_argument("--batch", type=int, default=16, help="images in the throughput run")
    p.add_argument("--repeats", type=int, default=3, help="timed single-caption runs of the engine (median)")
    p.add_argument("--no-reference", action="store_true", help="skip the (slow) reference decoder")
    p.add_argument("--compile", type=lambda v: [m for m in v.split(",") if m], default=["default"], metavar="MODES",
                   help="also time the fast form compiled (--compile MODE), for each mode in this comma list"
                        " (default: default; reduce-overhead = CUDA graphs, GPU only; '' = none); warm-up times"
                        " (the compile) in their own column")
    p.add_argument("--no-exact", action="store_true", help="skip the exact form (as slow as the reference at real"
                                                           " sizes)")
    p.add_argument("--concurrency", type=lambda v: [int(x) for x in v.split(",") if x], default=[1, 4, 16],
                   metavar="LEVELS", help="captions/s with this many clients in flight (comma list; '' = skip)")
    p.add_argument("--no-mixed", dest="mixed", action="store_false",
                   help="skip the mixed-settings rows (other settings among the defaults; a heavy request among"
                        " light ones)")
    p.add_argument("--mixed-requests", type=int, default=8, metavar="N",
                   help="the mixed-settings rows: requests each of the 5 clients sends per share")
    p.add_argument("--no-profile", dest="profile", action="store_false",
                   help="skip the profiled caption (where the time goes, by engine region)")
    p.add_argument("--lm-dtype", choices=["float32", "bfloat16"], default="float32")
    p.add_argument("--pt-sentences", type=int, default=5, metavar="N",
                   help="the pseudo-token rows: sentences per request (their default is 30)")
    p.add_argument("--pt-tokens", type=int, default=20, metavar="N", help="the pseudo-token rows: tokens per sentence")
    p.add_argument("--no-pseudo-tokens", dest="pseudo_tokens", action="store_false",
                   help="skip the pseudo-token rows (the authors' follow-up method)")
    p.add_argument("--only-pseudo-tokens", action="store_true", help="only the pseudo-token rows")
    p.add_argument("--results", default=os.path.join(HERE, "RESULTS.md"), help="append the table here ('' = don't)")
    args = p.parse_args()

    quiet_transformers()
    device = torch.device(args.device or ("cpu" if args.tiny or not torch.cuda.is_available() else "cuda"))
    torch.set_grad_enabled(True)
    lm, tok, clip_model, preprocess = (tiny_models if args.tiny else real_size_models)(device)
    if args.lm_dtype == "bfloat16":
        lm = lm.to(torch.bfloat16)
    cfg = ZeroCapConfig(max_tokens=args.tokens)
    images = random_images(max(args.batch, 4))
    rows = []
    size = "tiny test models" if args.tiny else "GPT-2 medium + CLIP ViT-B/32 (random weights)"
    pt_table = ""
    if args.pseudo_tokens and args.lm_dtype == "float32":
        pt_table = pseudo_token_rows(lm, tok, clip_model, preprocess, device, images, args.pt_sentences, args.pt_tokens,
                                     reference=not args.no_reference,
                                     exact=clip_model.dtype == torch.float32 and not args.no_exact,
                                     repeats=args.repeats)
        print(pt_table, flush=True)
    if args.only_pseudo_tokens:
        head = (f"\n## {datetime.date.today().isoformat()} — {size}, {device.type}: the pseudo-token method\n\n"
                f"Machine: {machine(device)}. Git: {git_rev()}.\n")
        append(args.results, head + pt_table)
        return 0

    def engine_for(form, compile_mode=None):
        return ZeroCap(lm, tok, clip_model, preprocess, device=device, form=form, compile=compile_mode or False)

    variants = [("engine, fast form (default), eager", "fast", None)]
    if clip_model.dtype == torch.float32 and args.lm_dtype == "float32" and not args.no_exact:
        variants.append(("engine, exact form (--form exact)", "exact", None))
    for mode in args.compile:  # the fast form's step compiled once (--compile MODE)
        if mode == "reduce-overhead" and device.type != "cuda":
            print("reduce-overhead (CUDA graphs) needs a GPU: skipped", flush=True)
            continue
        variants.append((f"engine, fast form, compiled ({mode})", "fast", mode))
    target = None
    results = {}
    notes = []
    warm_ups = {}
    for name, form, compile_mode in variants:
        try:
            zc = engine_for(form, compile_mode)
            warm_ups[name] = zc.warm_up(cfg)  # compiles this configuration's step, when compiled
        except Exception as e:  # a failed variant is reported, not fatal
            notes.append(f"{name}: failed: {type(e).__name__}: {str(e)[:300]}")
            print(notes[-1], flush=True)
            continue
        if zc.compiled is not None and zc.compiled.failed:
            notes.append(f"{name}: torch.compile failed, decoded eagerly: {zc.compiled.failed[:300]}")
        print(f"{name}: warm-up {warm_ups[name]:.1f} s", flush=True)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        times = []
        for _ in range(args.repeats):
            res, seconds = timed(lambda: zc.caption(images[:1], config=cfg)[0], device)
            times.append(seconds)
        seconds = sorted(times)[len(times) // 2]
        peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
        results[name] = (res, seconds, peak)
        target = zc.targets.image_target(images[0])
        print(f"{name}: {seconds:.3f} s/caption ({res.tokens} tokens)", flush=True)

    ref_seconds = ref_texts = None
    if not args.no_reference:
        from reference_decoder import ReferenceDecoder

        zc = engine_for("exact")
        ref = ReferenceDecoder(lm, tok, clip_model, zc.forbidden.nonzero()[:, 0].tolist(), cfg, device=device)
        (ref_texts, _), ref_seconds = timed(lambda: ref.run(target[None], cfg.cond_text), device)
        print(f"reference decoder: {ref_seconds:.3f} s/caption", flush=True)

    for name, (res, seconds, peak) in results.items():
        match = "—" if ref_texts is None else ("yes" if [b.text for b in res.beams] == ref_texts else "no")
        rows.append((name, seconds, seconds / res.tokens, ref_seconds / seconds if ref_seconds else None, peak, match,
                     warm_ups.get(name)))
    if ref_seconds is not None:
        rows.append(("reference decoder (tests/)", ref_seconds, ref_seconds / res.tokens, 1.0, None, "—", None))

    # throughput: a batch of images decoded together, fast form
    zc = engine_for("fast")
    batch = images[: args.batch]
    _, batch_seconds = timed(lambda: zc.caption(batch, config=cfg), device)
    print(f"batch of {len(batch)}: {batch_seconds:.2f} s = {len(batch) / batch_seconds:.2f} captions/s", flush=True)

    # many clients: the engine a container runs (compiled on a GPU, when it compiled here)
    served = next((m for n, f, m in reversed(variants) if m and n in results and not (
        device.type != "cuda" and m != "default")), None)
    concurrency_table = concurrency_rows(engine_for("fast", served), images, cfg, args.concurrency, device) \
        if args.concurrency else ""
    if concurrency_table:
        concurrency_table = f"Engine: fast form, {f'compiled ({served})' if served else 'eager'}.\n\n" + concurrency_table
    # the container's engine: compiled on a GPU; eager on a CPU, as the container decodes there by default
    mixed_table = mixed_rows(engine_for("fast", served if device.type == "cuda" else None), images, device,
                             per_client=args.mixed_requests) if args.mixed else ""
    lone_table = lone_rows(engine_for("fast", served), images, cfg, device) if served and args.mixed else ""
    profile_table = profile_caption(engine_for("fast"), images[0], cfg, device) if args.profile else ""
    print(profile_table, flush=True)

    head = (f"\n## {datetime.date.today().isoformat()} — {size}, {device.type}, LM {args.lm_dtype}\n\n"
            f"Machine: {machine(device)}. Git: {git_rev()}.\n"
            f"Paper defaults: beam 5, 5 iterations, top 512, {args.tokens} tokens; median of {args.repeats} runs.\n\n"
            "| decoder | s/caption | s/token | speed-up vs reference | peak GPU GiB | beams = reference | warm-up s |\n"
            "| --- | ---: | ---: | ---: | ---: | --- | ---: |\n")
    body = "".join(
        f"| {n} | {s:.3f} | {t:.3f} | {'' if r is None else f'{r:.1f}x'} | {'' if m is None else f'{m:.2f}'} | {ok} |"
        f" {'' if w is None else f'{w:.1f}'} |\n" for n, s, t, r, m, ok, w in rows)
    tail = f"\nBatch of {len(batch)} images (fast form): {batch_seconds:.2f} s, {len(batch) / batch_seconds:.2f} captions/s.\n"
    if concurrency_table:
        tail += ("\nMany clients, one engine (the scheduler decodes what is in flight together; each client sends"
                 " its next request when its answer arrives):\n\n" + concurrency_table)
    if mixed_table:
        tail += ("\nRequests of other settings among light ones (the container's engine; 5 clients, each sending its"
                 " next request when its"
                 " answer arrives; other settings: beam 3, top-k 24, 4 iterations, fusion 0.95, grad-norm 0.8):\n\n"
                 + mixed_table)
    if lone_table:
        tail += (f"\nA lone request, compiled ({served}), in a container sized for more (the static layout steps the"
                 " smallest size that holds it):\n\n" + lone_table)
    tail += pt_table
    tail += "".join(f"\n- {n}" for n in notes) + ("\n" if notes else "")
    tail += "\n" + profile_table if profile_table else ""
    print(head + body + tail)
    append(args.results, head + body + tail)
    return 0


def git_rev() -> str:
    try:
        return subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True).stdout.strip() or "unknown"
    except OSError:
        return "unknown"


if __name__ == "__main__":
    sys.exit(main())
