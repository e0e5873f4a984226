#!/usr/bin/env python3
"""ZeroCap on today's open LM families (issue 32): the fast form against the exact form, per family.

Random weights (timing does not depend on weight values), no downloads:
  --tiny   the tests' tiny configs of each family (tests/tiny_models.py: LM_FAMILIES) on the CPU
  default  real-size configs on the GPU (Qwen2.5-0.5B, Llama-3.2-1B, SmolLM2-360M, Gemma-3-1B,
           Pythia-410M and GPT-2 medium's shapes), with CLIP ViT-B/32; the tokenizer is GPT-2's
           byte-level one, the vocabulary padded to the model's size (padding rows decode to
           nothing: the step's cost is the model's; SmolLM2's smaller one grown to GPT-2's)

For each family: s/caption of the fast form and the exact form (beam 5, 5 iterations, top 512,
--tokens tokens, one image), their ratio, whether their beams agree, and the pseudo-token
method's fast form (5 sentences of --pt-tokens tokens). Appends a table to bench/RESULTS.md.

    python bench/families.py --tiny                      # CPU, a few minutes
    python bench/families.py --no-exact                  # real sizes on one GPU (bench/gpu.sh)
"""
from __future__ import annotations

import argparse
import datetime
import os
import sys
import tempfile
import time
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests"), HERE]
warnings.filterwarnings("ignore")

import zerocap  # noqa: E402,F401,I001 -- before torch, as the command line and the container
import torch  # noqa: E402

from benchmark import git_rev, machine, random_images, real_size_models, sync  # noqa: E402
from machine import append  # noqa: E402
from zerocap import ZeroCap, ZeroCapConfig  # noqa: E402
from zerocap.modes import Target  # noqa: E402
from zerocap.pseudo_tokens import PseudoTokenConfig  # noqa: E402

TINY = ["gpt2", "llama", "qwen2", "gemma3", "gpt_neox"]
# real sizes: (config class, arguments) -- the published configs' shapes
_R = dict(initializer_range=0.02)
REAL = {
    "gpt2-medium": ("GPT2Config", dict(n_layer=24, n_embd=1024, n_head=16, vocab_size=50257)),
    "Qwen2.5-0.5B": ("Qwen2Config", dict(_R, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                                         num_attention_heads=14, num_key_value_heads=2, vocab_size=151936,
                                         tie_word_embeddings=True, max_position_embeddings=32768)),
    "Llama-3.2-1B": ("LlamaConfig", dict(_R, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                                         num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
                                         tie_word_embeddings=True, max_position_embeddings=8192)),
    "SmolLM2-360M": ("LlamaConfig", dict(_R, hidden_size=960, intermediate_size=2560, num_hidden_layers=32,
                                         num_attention_heads=15, num_key_value_heads=5, vocab_size=49152,
                                         tie_word_embeddings=True, max_position_embeddings=8192)),
    "gemma-3-1b": ("Gemma3TextConfig", dict(_R, hidden_size=1152, intermediate_size=6912, num_hidden_layers=26,
                                            num_attention_heads=4, num_key_value_heads=1, head_dim=256,
                                            vocab_size=262144, sliding_window=512, max_position_embeddings=32768)),
    "pythia-410m": ("GPTNeoXConfig", dict(_R, hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                                          num_attention_heads=16, vocab_size=50304, rotary_pct=0.25)),
}


def tiny_lm(name: str, root: str, device):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tiny_models import write_tiny_gpt2, write_tiny_lm

    path = os.path.join(root, name)
    write_tiny_gpt2(path) if name == "gpt2" else write_tiny_lm(path, name)
    return AutoModelForCausalLM.from_pretrained(path).to(device), AutoTokenizer.from_pretrained(path)


def real_lm(name: str, device):
    import transformers
    from transformers import GPT2TokenizerFast

    cls, kwargs = REAL[name]
    fixtures = os.path.join(ROOT, "tests", "fixtures")
    tok = GPT2TokenizerFast(os.path.join(fixtures, "vocab.json"), os.path.join(fixtures, "merges.txt"))
    torch.manual_seed(0)
    # (SmolLM2's 49,152 rows are fewer than GPT-2's tokenizer has: the GPT-2 vocabulary's size then)
    kwargs = {**kwargs, "vocab_size": max(kwargs["vocab_size"], len(tok))}
    cfg = getattr(transformers, cls)(**kwargs, bos_token_id=50256, eos_token_id=50256)
    return transformers.AutoModelForCausalLM.from_config(cfg).to(device).eval(), tok


def timed(fn, device, repeats: int = 1):
    times, out = [], None
    for _ in range(repeats):
        sync(device)
        t = time.perf_counter()
        out = fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return out, sorted(times)[len(times) // 2]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="the tests' tiny configs on the CPU")
    p.add_argument("--families", type=lambda v: v.split(","), default=None,
                   help=f"comma-separated (tiny: {','.join(TINY)}; real: {','.join(REAL)})")
    p.add_argument("--tokens", type=int, default=5, help="tokens per caption (the paper: 15)")
    p.add_argument("--pt-tokens", type=int, default=10, help="tokens per pseudo-token sentence")
    p.add_argument("--no-exact", action="store_true", help="skip the exact form (minutes at real sizes)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs of the fast form (median)")
    p.add_argument("--results", default=os.path.join(HERE, "RESULTS.md"), help="append the table here ('' = don't)")
    args = p.parse_args()
    quiet = __import__("zerocap.loading", fromlist=["quiet_transformers"])
    quiet.quiet_transformers()
    device = torch.device("cpu" if args.tiny or not torch.cuda.is_available() else "cuda")
    names = args.families or (TINY if args.tiny else list(REAL))
    root = tempfile.mkdtemp(prefix="zerocap-families-")
    if args.tiny:
        from tiny_models import write_tiny_clip
        from zerocap.loading import load_clip

        scorer = load_clip(write_tiny_clip(os.path.join(root, "clip.pt")), device)
        clip_model, preprocess = scorer.clip, scorer.preprocess
    else:
        _, _, clip_model, preprocess = real_size_models(device)
    image = random_images(1)[0]
    cfg = ZeroCapConfig(max_tokens=args.tokens)  # beam 5, 5 iterations, top 512
    pt_cfg = PseudoTokenConfig(sentence_iterations=5, max_tokens=args.pt_tokens)
    rows = []
    for name in names:
        lm, tok = tiny_lm(name, root, device) if args.tiny else real_lm(name, device)
        c = lm.config
        kv = getattr(c, "num_key_value_heads", None) or getattr(c, "num_attention_heads", None) or c.n_head
        heads = getattr(c, "num_attention_heads", None) or c.n_head
        fast = ZeroCap(lm, tok, clip_model, preprocess, device=device)
        fast.caption([image], config=cfg.replace(max_tokens=2))  # tables, kernels
        res, seconds = timed(lambda: fast.caption([image], config=cfg)[0], device, args.repeats)
        row = {"family": name, "model_type": c.model_type, "heads": f"{heads}/{kv}", "fast": seconds,
               "exact": None, "same": "—", "pt": None}
        print(f"{name}: fast {seconds:.2f} s", flush=True)
        if not args.no_exact:
            exact = ZeroCap(lm, tok, clip_model, preprocess, device=device, form="exact")
            res_e, row["exact"] = timed(lambda: exact.caption([image], config=cfg)[0], device)
            row["same"] = "yes" if [b.text for b in res.beams] == [b.text for b in res_e.beams] else "no"
            print(f"{name}: exact {row['exact']:.2f} s", flush=True)
        if next(lm.parameters()).dtype == torch.float32:
            target = Target(fast.targets.image_target(image), "image")
            fast.pseudo_tokens.decode([target], pt_cfg.replace(sentence_iterations=1, max_tokens=2))
            _, row["pt"] = timed(lambda: fast.pseudo_tokens.decode([target], pt_cfg), device)
            print(f"{name}: pseudo-tokens {row['pt']:.2f} s", flush=True)
        rows.append(row)
    size = "tiny test configs" if args.tiny else "real-size configs, random weights"
    lines = [f"\n## {datetime.date.today().isoformat()} — LM families ({size}), {device.type}\n",
             f"Machine: {machine(device)}. Git: {git_rev()}.",
             f"ZeroCap: beam 5, 5 iterations, top 512, {args.tokens} tokens, one image (fast: median of "
             f"{args.repeats}); pseudo-tokens: 5 sentences of at most {args.pt_tokens} tokens, fast form.\n",
             "| family | model_type | heads / kv heads | fast s/caption | exact s/caption | fast vs exact"
             " | beams fast = exact | pseudo-tokens s |",
             "| --- | --- | --- | ---: | ---: | ---: | --- | ---: |"]
    for r in rows:
        ratio = f"{r['exact'] / r['fast']:.1f}x" if r["exact"] else "—"
        lines.append(f"| {r['family']} | {r['model_type']} | {r['heads']} | {r['fast']:.3f} | "
                     f"{r['exact']:.3f} | {ratio} | {r['same']} | " if r["exact"] else
                     f"| {r['family']} | {r['model_type']} | {r['heads']} | {r['fast']:.3f} | — | — | — | ")
        lines[-1] += f"{r['pt']:.3f} |" if r["pt"] is not None else "— |"
    table = "\n".join(lines) + "\n"
    print(table, flush=True)
    append(args.results, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
