#!/usr/bin/env python3
"""How often both forms of the engine give the literal reference decoder's beams.

Random cases, fp32 on the CPU: random tiny GPT-2 and CLIP models (depths, widths, heads, weight
scales), random images, prompts, beam sizes, top-k, lengths, end factors, repetition penalties
and iteration counts. Each case is decoded by the reference decoder (tests/reference_decoder.py),
the exact form and the fast form; a form agrees when its beams (texts, in order) are the
reference's. When they differ, the report says where and by how much: the first rank that
differs and the score gap there, so near-ties (two candidates within rounding of each other)
are told apart from real differences.

    python bench/agreement.py --cases 60              # appends a section to bench/RESULTS.md
"""
from __future__ import annotations

import argparse
import datetime
import os
import random
import sys
import time
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests"), HERE]
warnings.filterwarnings("ignore")

import torch  # noqa: E402

from benchmark import git_rev, machine, random_images  # noqa: E402
from machine import append  # noqa: E402
from reference_decoder import ReferenceDecoder  # noqa: E402
from zerocap import ZeroCap, ZeroCapConfig  # noqa: E402
from zerocap.loading import quiet_transformers  # noqa: E402

PROMPTS = ["Image of a", "Image of", "Image of text that says", "A photo of", "", "A " + "very " * 68 + "red"]


def random_case(rng: random.Random) -> dict:
    heads = rng.choice([1, 2, 4])
    return {
        "lm": dict(n_layer=rng.choice([1, 2, 3]), n_embd=heads * rng.choice([8, 16, 24]), n_head=heads,
                   initializer_range=rng.choice([0.02, 0.1, 0.2, 0.3]), n_positions=128),
        "clip": dict(layers=rng.choice([1, 2]), seed=rng.randrange(1000)),
        "seed": rng.randrange(1000),
        "image": rng.randrange(8),
        "cfg": dict(cond_text=rng.choice(PROMPTS), beam_size=rng.choice([1, 2, 3, 5]),
                    top_k=rng.choice([16, 32, 64, 128]), max_tokens=rng.randint(2, 7),
                    num_iterations=rng.randint(1, 5), end_factor=rng.choice([1.01, 1.04, 1.5, 4.0]),
                    repetition_penalty=rng.choice([1.0, 1.0, 1.3]), stepsize=rng.choice([0.3, 0.3, 0.8])),
    }


def models(case: dict):
    from clip.clip import _transform
    from clip.model import CLIP
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2Tokenizer

    fixtures = os.path.join(ROOT, "tests", "fixtures")
    tok = GPT2Tokenizer(os.path.join(fixtures, "vocab.json"), os.path.join(fixtures, "merges.txt"))
    torch.manual_seed(case["seed"])
    lm = GPT2LMHeadModel(GPT2Config(**case["lm"])).eval()
    torch.manual_seed(case["clip"]["seed"])
    clip_model = CLIP(embed_dim=32, image_resolution=32, vision_layers=case["clip"]["layers"], vision_width=64,
                      vision_patch_size=16, context_length=77, vocab_size=49408, transformer_width=64,
                      transformer_heads=1, transformer_layers=case["clip"]["layers"])
    with torch.no_grad():
        clip_model.token_embedding.weight.normal_(0, 0.5)
    return lm, tok, clip_model.eval(), _transform(32)


def compare(result, texts, scores) -> tuple[bool, float | str]:
    """(True, largest relative score difference) or (False, where and by how much they differ)."""
    got = [b.text for b in result.beams]
    if got == texts:
        return True, max(abs(b.score - s) / abs(s) for b, s in zip(result.beams, scores))
    i = next(k for k, (a, b) in enumerate(zip(got, texts)) if a != b)
    gap = abs(result.beams[i].score - scores[i])
    near = min((abs(scores[j] - scores[j + 1]) for j in range(len(scores) - 1)), default=float("inf"))
    return False, (f"rank {i + 1} differs ({got[i]!r} vs {texts[i]!r}); score gap there {gap:.1e},"
                   f" closest reference scores {near:.1e} apart")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", type=int, default=60)
    p.add_argument("--seed", type=int, default=0, help="of the random cases")
    p.add_argument("--results", default=os.path.join(HERE, "RESULTS.md"), help="append the report here ('' = don't)")
    p.add_argument("--forms", default="exact,fast", help="comma list of exact, fast and compiled (the fast form"
                                                          " compiled: each case compiles, ~20-30 s on 2 CPU cores)")
    args = p.parse_args()
    forms = [f for f in args.forms.split(",") if f]
    quiet_transformers()
    torch.set_grad_enabled(True)
    rng = random.Random(args.seed)
    images = random_images(8, size=64)
    agree = {form: 0 for form in forms}
    worst = {form: 0.0 for form in forms}  # largest relative score difference where the beams agree
    notes, start = [], time.time()
    for n in range(args.cases):
        if "compiled" in forms:
            torch._dynamo.reset()  # each case compiles its own models' step afresh
        case = random_case(rng)
        lm, tok, clip_model, preprocess = models(case)
        engines = {form: ZeroCap(lm, tok, clip_model, preprocess, device="cpu", form="exact" if form == "exact" else
                                 "fast", compile=form == "compiled") for form in agree}
        any_engine = next(iter(engines.values()))
        cfg = any_engine.check(ZeroCapConfig(**case["cfg"]))
        target = any_engine.targets.image_target(images[case["image"]])
        ref = ReferenceDecoder(lm, tok, clip_model, any_engine.forbidden.nonzero()[:, 0].tolist(), cfg)
        texts, scores = ref.run(target[None], cfg.cond_text)
        for form, engine in engines.items():
            same, detail = compare(engine.caption([images[case["image"]]], config=cfg)[0], texts, scores)
            agree[form] += same
            if same:
                worst[form] = max(worst[form], detail)
            else:
                notes.append(f"case {n + 1} ({form} form): {detail}; case {case}")
        print(f"case {n + 1}/{args.cases}: " + ", ".join(f"{f} {k}" for f, k in agree.items()) + " agree so far",
              flush=True)
    text = (f"\n## {datetime.date.today().isoformat()} — agreement with the reference decoder "
            f"(bench/agreement.py, {args.cases} random cases, seed {args.seed})\n\n"
            f"Machine: {machine(torch.device('cpu'))}. Git: {git_rev()}. {time.time() - start:.0f} s.\n"
            "Random tiny GPT-2 (1-3 layers, 8-96 wide, 1-4 heads, init 0.02-0.3) and CLIP models, images,"
            " prompts (empty to 72 CLIP tokens), beam 1-5, top-k 16-128, 2-7 tokens, 1-5 iterations, end"
            " factor 1.01-4, repetition penalty 1 or 1.3, step size 0.3 or 0.8; fp32.\n\n"
            "| form | beams = reference | largest relative score difference |\n| --- | ---: | ---: |\n"
            + "".join(f"| {form} | {k} of {args.cases} | {worst[form]:.1e} |\n" for form, k in agree.items())
            + ("\n" + "\n".join(f"- {x}" for x in notes) + "\n" if notes else "\nEvery case gave the reference's beams"
               f" in every form run ({', '.join(agree)}).\n"))
    print(text)
    append(args.results, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
