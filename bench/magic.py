#!/usr/bin/env python3
"""MAGIC search (issue 42) against their code's structure, and against ZeroCap's method.

Their code is not run here (it pins transformers 4.x and has no licence); `TheirStep` below is
their step as their README and paper describe its work, written for this benchmark: the LM's
key/value cache copied k ways, the LM's logits computed for every candidate, every candidate's
text decoded by the LM's tokenizer, tokenized by CLIP's and encoded whole, one image at a time.
It gives the same captions as the method's forms (the "same" column).

  --tiny   the tests' tiny models (GPT-2, and a Hugging Face CLIP -- their CLIP's kind -- or an
           OpenAI CLIP), their defaults (k 45, alpha 0.1, beta 2, 15 tokens): their structure, the
           exact form and the fast form on one image, and the fast form on 4 images together
  default  real sizes (GPT-2 medium + OpenAI CLIP ViT-B/32, random weights) on the CPU: MAGIC's
           two forms and their structure, and ZeroCap's method (paper defaults) per token

    python bench/magic.py --tiny [--repeats 5]
    python bench/magic.py [--zerocap-tokens 3]
"""
from __future__ import annotations

import argparse
import datetime
import inspect
import os
import statistics
import sys
import tempfile
import time
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:0] = [ROOT, HERE, os.path.join(ROOT, "tests")]
warnings.filterwarnings("ignore")

import zerocap  # noqa: E402,F401,I001 -- before torch, as the command line: how idle OpenMP workers wait
import torch  # noqa: E402
from transformers import DynamicCache  # noqa: E402

from benchmark import random_images, real_size_models  # noqa: E402
from machine import append, cpu_model  # noqa: E402
from reference_magic import their_parse  # noqa: E402 -- their caption parse, as the tests' reference writes it
from zerocap import MagicConfig, ZeroCap, ZeroCapConfig  # noqa: E402
from zerocap.decoding import decode  # noqa: E402
from zerocap.modes import Target  # noqa: E402


class TheirStep:
    """MAGIC in their code's structure (see the module docstring), for one image."""

    def __init__(self, engine, cfg: MagicConfig):
        self.lm, self.tok, self.cfg = engine.lm, engine.tokenizer, cfg
        self.scorer = engine.scorer
        self.logit_scale = float(engine.scorer.clip.logit_scale.exp())
        self.start = self.tok.bos_token_id if self.tok.bos_token_id is not None else self.tok.eos_token_id
        self.end = self.tok.eos_token_id
        params = inspect.signature(self.lm.forward).parameters
        self.cache_arg = "cache" if "cache" in params else "past_key_values"

    def _cache(self, out):
        return out.cache if getattr(out, "cache", None) is not None else out.past_key_values

    @torch.no_grad()
    def run(self, image: torch.Tensor) -> str:
        cfg, tok = self.cfg, self.tok
        ids = [self.start] + tok.encode(cfg.cond_text, add_special_tokens=False)
        prefix = len(ids)
        image = image.float() / image.float().norm()
        out = self.lm(torch.tensor([ids]), use_cache=True, output_hidden_states=True,
                      **{self.cache_arg: DynamicCache()})
        cache, hidden, logits = self._cache(out), out.hidden_states[-1], out.logits[:, -1]
        for _ in range(cfg.max_tokens):
            probs = torch.softmax(logits, dim=-1)
            top = torch.topk(logits, cfg.k, dim=-1).indices  # (1, k)
            wide = DynamicCache(ddp_cache_data=[(layer.keys.expand(cfg.k, -1, -1, -1).contiguous(),
                                                 layer.values.expand(cfg.k, -1, -1, -1).contiguous())
                                                for layer in cache.layers])
            out = self.lm(top.view(-1, 1), use_cache=True, output_hidden_states=True, **{self.cache_arg: wide})
            nxt = out.hidden_states[-1][:, -1]  # (k, D)
            ctx = hidden[0] / hidden[0].norm(dim=-1, keepdim=True)
            penalty = (nxt / nxt.norm(dim=-1, keepdim=True) @ ctx.T).max(dim=-1).values
            texts = [tok.decode((ids[prefix:] + [v])[-cfg.clip_text_max_len:]) for v in top[0].tolist()]
            feats = self.scorer.text_features(texts).float()
            feats = feats / feats.norm(dim=-1, keepdim=True)
            clip = torch.softmax(self.logit_scale * (feats @ image), dim=0)
            score = (1 - cfg.alpha) * probs[0, top[0]] - cfg.alpha * penalty + cfg.beta * clip
            c = int(score.argmax())
            ids.append(int(top[0, c]))
            cache = self._cache(out)
            cache = DynamicCache(ddp_cache_data=[(layer.keys[c:c + 1], layer.values[c:c + 1]) for layer in cache.layers])
            hidden = torch.cat([hidden, nxt[c:c + 1][None]], dim=1)
            logits = out.logits[c:c + 1, -1]
        return their_parse(tok, ids, self.start, self.end)


def median(fn, repeats: int):
    fn()  # warm-up
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return out, statistics.median(times)


def magic_rows(fast: ZeroCap, exact: ZeroCap, images, cfg: MagicConfig, repeats: int, batch: int = 4) -> list[str]:
    targets = [Target(fast.targets.image_target(im), f"image {i}") for i, im in enumerate(images)]
    theirs, t_theirs = median(lambda: TheirStep(exact, cfg).run(targets[0].vector), repeats)
    ex, t_exact = median(lambda: exact.decoder("magic").decode(targets[:1], cfg)[0].caption, repeats)
    fa, t_fast = median(lambda: fast.decoder("magic").decode(targets[:1], cfg)[0].caption, repeats)

    def together():
        requests = [fast.request(t, cfg) for t in targets[:batch]]
        b = requests[0].new_batch(fast)
        decode(requests, b)
        return [b.result(r).caption for r in requests]
    many, t_many = median(together, repeats)
    alone = [fast.decoder("magic").decode([t], cfg)[0].caption for t in targets[:batch]]
    # the bound (magic/decoder.py: contenders) at its tightest: alpha 0 keeps each step's winner alone;
    # how much it prunes at alpha > 0 depends on the weights (random ones score the candidates alike)
    cfg0 = cfg.replace(alpha=0.0)
    theirs0 = TheirStep(exact, cfg0).run(targets[0].vector)  # their time does not depend on alpha
    fa0, t_fast0 = median(lambda: fast.decoder("magic").decode(targets[:1], cfg0)[0].caption, repeats)
    return [f"| their structure | {t_theirs:.3f} | 1.0× | — |",
            f"| exact form | {t_exact:.3f} | {t_theirs / t_exact:.1f}× | {'yes' if ex == theirs else 'NO'} |",
            f"| fast form ({lm_rows(fast, targets[0], cfg):.1f} of {cfg.k} candidates through the LM a step) | {t_fast:.3f}"
            f" | {t_theirs / t_fast:.1f}× | {'yes' if fa == theirs else 'NO'} |",
            f"| fast form, {batch} images together (per image) | {t_many / batch:.3f} | {t_theirs * batch / t_many:.1f}× |"
            f" {'yes' if many == alone else 'NO'} (each as alone) |",
            f"| fast form, alpha 0 ({lm_rows(fast, targets[0], cfg0):.1f} of {cfg.k} candidates through the LM a step) |"
            f" {t_fast0:.3f} | {t_theirs / t_fast0:.1f}× | {'yes' if fa0 == theirs0 else 'NO'} (their structure at alpha 0) |"]


def lm_rows(engine: ZeroCap, target: Target, cfg: MagicConfig) -> float:
    """Candidates the fast form runs through the LM a step, on average, for one image."""
    method, rows = engine.decoder("magic"), []
    run = method.candidates
    method.candidates = lambda past, top: rows.append(len(top)) or run(past, top)
    try:
        method.decode([target], cfg)
    finally:
        del method.candidates  # the class's own again
    return sum(rows) / max(1, len(rows))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--zerocap-tokens", type=int, default=3, help="real sizes: ZeroCap's tokens (its s/token)")
    p.add_argument("--results", default=os.path.join(HERE, "RESULTS.md"), help="append the table here ('' = don't)")
    args = p.parse_args()
    cfg = MagicConfig()
    head = "| what | s a caption | against their structure | same caption |\n| --- | ---: | ---: | --- |\n"
    where = f"{cpu_model()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    images = random_images(4)
    if args.tiny:
        from tiny_models import write_tiny_hf_clip, write_weights

        root = write_weights(tempfile.mkdtemp(prefix="zerocap-magic-"))
        lm = os.path.join(root, "gpt2-medium")
        hf = write_tiny_hf_clip(os.path.join(root, "hf-clip"))
        text = (f"\n## MAGIC against their code's structure, tiny test models (bench/magic.py --tiny), "
                f"{datetime.date.today()}\n\n{where}; their defaults (k 45, alpha 0.1, beta 2, 15 tokens, CLIP reading"
                f" the last 60), one image unless said; median of {args.repeats}.\n")
        for name, clip in (("Hugging Face CLIP (their CLIP's kind)", hf),
                           ("OpenAI CLIP", os.path.join(root, "clip", "ViT-B-32.pt"))):
            fast = ZeroCap.load(lm, clip, device="cpu")
            exact = ZeroCap.load(lm, clip, device="cpu", form="exact")
            text += f"\n{name}:\n\n" + head + "\n".join(magic_rows(fast, exact, images, cfg, args.repeats)) + "\n"
    else:
        lm, tok, clip_model, preprocess = real_size_models(torch.device("cpu"))
        fast = ZeroCap(lm, tok, clip_model, preprocess, device="cpu")
        exact = ZeroCap(lm, tok, clip_model, preprocess, device="cpu", form="exact")
        rows = magic_rows(fast, exact, images, cfg, max(1, min(args.repeats, 3)), batch=2)
        zc_cfg = ZeroCapConfig(max_tokens=args.zerocap_tokens)
        target = [Target(fast.targets.image_target(images[0]), "image")]
        _, t_zc = median(lambda: fast.decode_targets(target, fast.check(zc_cfg)), 1)
        magic_token = float(rows[2].split("|")[2]) / cfg.max_tokens
        text = (f"\n## MAGIC against ZeroCap's method at real sizes (bench/magic.py), {datetime.date.today()}\n\n"
                f"{where}; GPT-2 medium + OpenAI CLIP ViT-B/32, random weights (timing does not depend on them), "
                f"fp32; MAGIC at their defaults (k 45, 15 tokens; a random LM never ends early), one image.\n\n"
                + head + "\n".join(rows) + "\n\n"
                f"ZeroCap's method (fast form, the paper's defaults: beam 5, 5 iterations, top 512), "
                f"{args.zerocap_tokens} tokens: {t_zc:.1f} s, {t_zc / args.zerocap_tokens:.2f} s a token; MAGIC's fast "
                f"form {magic_token:.3f} s a token: **{t_zc / args.zerocap_tokens / magic_token:.0f}×** ZeroCap's per "
                f"token (a 15-token ZeroCap caption: ~{15 * t_zc / args.zerocap_tokens:.0f} s).\n")
    print(text)
    append(args.results, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
