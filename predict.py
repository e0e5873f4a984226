"""Cog runner for ZeroCap: validate the inputs, call the `zerocap` package, shape the output.

Modes (the paper's four uses): caption, knowledge ("Image of" → names places and people),
ocr ("Image of text that says"), arithmetic (weighted sum of images and texts, e.g.
woman + king − man). Optional inputs left empty take the mode's preset value.
"""
from __future__ import annotations

import inspect
import math
import os
import time
from typing import Optional

import torch
from cog import BaseModel, BaseRunner, CancelationException, Input, Path
from cog.input import FieldInfo

from zerocap import ZeroCap, preset, weights
from zerocap.loading import quiet_transformers, resolve_device
from zerocap.target import load_image

MODES = ["caption", "knowledge", "ocr", "arithmetic"]
MAX_TERMS = 16  # images + texts in one arithmetic target


class Output(BaseModel):
    caption: str  # best by beam score (the authors' "best mixed")
    best_clip: str  # beam whose text is closest to the target in CLIP space
    best_fluency: str  # beam with the lowest GPT-2 perplexity
    beams: list[str]  # every beam's caption, best first
    beam_scores: list[float]  # mean log-probability per token (beam-search score / length)
    clip_scores: list[float]  # cosine similarity of each beam's text with the target
    perplexities: list[float]  # GPT-2 perplexity of each beam's text; -1 when undefined
    mode: str
    target: str  # what was captioned: "image", or the arithmetic expression
    cond_text: str
    tokens: int  # decoding steps run
    seconds: float  # decoding time, reranking included


class Predictor(BaseRunner):
    def setup(self) -> None:
        """Load GPT-2 medium and CLIP ViT-B/32 from weights/ (fetch them if missing and online)."""
        quiet_transformers()
        lm, clip = weights.ensure(weights.root(), log=print)
        self.model = ZeroCap.load(lm, clip, device=resolve_device(os.environ.get("ZEROCAP_DEVICE", "auto")))
        from PIL import Image

        warm = Image.new("RGB", (64, 64), (127, 127, 127))  # first-call kernels and caches
        self.model.caption([warm], config=self.model.config("caption", beam_size=2, max_tokens=2, top_k=16))

    def run(
        self,
        mode: str = Input(default="caption", choices=MODES,
                          description="caption: describe the image. knowledge: name the place or person"
                                      " ('Image of'). ocr: read the text in it ('Image of text that says')."
                                      " arithmetic: describe a weighted sum of images (and texts), e.g."
                                      " woman + king - man."),
        image: Optional[Path] = Input(default=None, description="The image, for caption, knowledge and ocr."),
        images: Optional[list[Path]] = Input(default=None,
                                             description=f"arithmetic: the images to combine (at most {MAX_TERMS}"
                                                         " terms with the texts)."),
        image_weights: Optional[list[float]] = Input(default=None,
                                                     description="arithmetic: one weight per image, e.g. 1, 1, -1"
                                                                 " (default: all 1); each in [-10, 10]."),
        texts: Optional[list[str]] = Input(default=None, description="arithmetic: texts to add to the target."),
        text_weights: Optional[list[float]] = Input(default=None,
                                                    description="arithmetic: one weight per text (default: all 1);"
                                                                " each in [-10, 10]."),
        cond_text: Optional[str] = Input(default=None, max_length=300,
                                         description="Prompt the caption continues; empty = the mode's"
                                                     " ('Image of a', 'Image of', 'Image of text that says')."),
        beam_size: int = Input(default=5, ge=1, le=20, description="Beams kept; more = slower, more varied."),
        max_tokens: int = Input(default=15, ge=1, le=40, description="Tokens generated at most."),
        num_iterations: int = Input(default=5, ge=0, le=20,
                                    description="Gradient steps on GPT-2's cache per token (0 = plain GPT-2)."),
        top_k: int = Input(default=512, ge=1, le=2048,
                           description="Candidate tokens scored by CLIP per beam and step; at least beam_size."),
        end_factor: Optional[float] = Input(default=None, ge=0.5, le=2.0,
                                            description="Boost of the end token '.': higher = shorter captions"
                                                        " (empty = the mode's: 1.01; knowledge/ocr 1.04;"
                                                        " arithmetic 1.06)."),
        end_factor_from: int = Input(default=1, ge=0, le=40,
                                     description="First step the end-token boost applies (the paper: 3)."),
        fusion_factor: Optional[float] = Input(default=None, ge=0.0, le=1.0,
                                               description="Weight of the CLIP-shifted GPT-2 against the plain one"
                                                           " (empty = 0.99; arithmetic 0.95)."),
        grad_norm_factor: Optional[float] = Input(default=None, ge=0.0, le=2.0,
                                                  description="Gradients are divided by their norm to this power"
                                                              " (empty = 0.9; arithmetic 0.95)."),
        ce_scale: float = Input(default=0.2, ge=0.0, le=5.0,
                                description="Weight of the fluency loss (stay close to plain GPT-2)."),
        clip_scale: float = Input(default=1.0, ge=0.0, le=10.0, description="Weight of the CLIP loss."),
        stepsize: float = Input(default=0.3, ge=0.0, le=3.0, description="Step size of the cache shift."),
        clip_temperature: float = Input(default=0.01, ge=0.001, le=1.0,
                                        description="Softmax temperature over the candidates' CLIP similarities."),
        repetition_penalty: float = Input(default=1.0, ge=0.5, le=3.0,
                                          description="Damping of the last 4 tokens; 1 = off."),
        forbidden_factor: float = Input(default=20.0, ge=1.0, le=100.0,
                                        description="Damping of bare numbers and ( ) , ! : newline."),
        seed: int = Input(default=0, ge=0, le=2**31 - 1, description="Torch seed (the decoder is deterministic)."),
    ) -> Output:
        check_declared_ranges(RUN_INPUTS, locals())
        terms = check_inputs(mode, image, images, image_weights, texts, text_weights)
        cfg = self.model.check(preset(
            mode,
            cond_text=cond_text or None, beam_size=beam_size, max_tokens=max_tokens,
            num_iterations=num_iterations, top_k=top_k, end_factor=end_factor, end_factor_from=end_factor_from,
            fusion_factor=fusion_factor, grad_norm_factor=grad_norm_factor, ce_scale=ce_scale,
            clip_scale=clip_scale, stepsize=stepsize, clip_temperature=clip_temperature,
            repetition_penalty=repetition_penalty, forbidden_factor=forbidden_factor,
        ))

        start = time.perf_counter()

        def progress(step: int, total: int, best: list[str]) -> None:
            print(f"token {step}/{total}: {cfg.cond_text}{best[0]}", flush=True)

        try:
            if mode == "arithmetic":
                pictures = [load_image(p) for p in terms["images"]]
                result = self.model.arithmetic(pictures, terms["image_weights"], terms["texts"],
                                               terms["text_weights"], config=cfg, progress=progress, seed=seed,
                                               names=[os.path.basename(str(p)) for p in terms["images"]])
                target = result.target
            else:
                result = self.model.caption([load_image(terms["image"])], config=cfg, progress=progress,
                                            seed=seed)[0]
                target = "image"
        except CancelationException:
            raise
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            raise ValueError("out of GPU memory: lower beam_size or top_k, or caption fewer terms at once") from None

        seconds = time.perf_counter() - start
        self.record_metric("tokens_generated", result.tokens)
        self.record_metric("seconds_per_token", result.seconds / max(1, result.tokens))
        self.record_metric("total_seconds", seconds)
        return Output(
            caption=result.best_mixed,
            best_clip=result.best_clip,
            best_fluency=result.best_fluency,
            beams=[b.caption for b in result.beams],
            beam_scores=[b.score for b in result.beams],
            clip_scores=[b.clip_score for b in result.beams],
            perplexities=[b.perplexity if math.isfinite(b.perplexity) else -1.0 for b in result.beams],
            mode=mode,
            target=target,
            cond_text=cfg.cond_text,
            tokens=result.tokens,
            seconds=seconds,
        )


# The declared inputs, read before the server wraps the method.
RUN_INPUTS = inspect.signature(Predictor.run).parameters


def check_declared_ranges(inputs, values: dict) -> None:
    """Enforce the choices and ranges declared with Input(): coglet checks them only when the
    schema file that `cog build` writes is present, so a bare server would let them through."""
    for name, param in inputs.items():
        info, value = param.default, values.get(name)
        if not isinstance(info, FieldInfo) or value is None:
            continue
        for v in value if isinstance(value, list) else [value]:
            if info.choices is not None and v not in info.choices:
                raise ValueError(f"{name} must be one of {', '.join(map(str, info.choices))}, got {v!r}")
            if isinstance(v, str) and info.max_length is not None and len(v) > info.max_length:
                raise ValueError(f"{name} is {len(v)} characters long; at most {info.max_length} are allowed")
            if isinstance(v, bool) or (info.ge is None and info.le is None):
                continue
            if not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"{name} must be a finite number, got {v!r}")
            if (info.ge is not None and v < info.ge) or (info.le is not None and v > info.le):
                raise ValueError(f"{name} must be between {info.ge} and {info.le}, got {v}")


def check_inputs(mode, image, images, image_weights, texts, text_weights) -> dict:
    """Which inputs each mode takes; ValueError naming the wrong combination and what is allowed."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    images, texts = list(images or []), list(texts or [])
    if mode != "arithmetic":
        extra = [n for n, v in (("images", images), ("image_weights", image_weights), ("texts", texts),
                                ("text_weights", text_weights)) if v]
        if extra:
            raise ValueError(f"mode {mode} takes `image`; {', '.join(extra)} are for mode=arithmetic")
        if image is None:
            raise ValueError(f"mode {mode} needs `image`")
        return {"image": image}
    if image is not None:
        raise ValueError("mode arithmetic takes `images` (a list, with `image_weights`), not `image`")
    if not images and not texts:
        raise ValueError("mode arithmetic needs `images` (and/or `texts`) with their weights, e.g. 1, 1, -1")
    if len(images) + len(texts) > MAX_TERMS:
        raise ValueError(f"arithmetic takes at most {MAX_TERMS} images and texts together,"
                         f" got {len(images) + len(texts)}")
    for name, values, count in (("image_weights", image_weights, len(images)), ("text_weights", text_weights,
                                                                                 len(texts))):
        if values is None:
            continue
        if len(values) != count:
            what = name.split("_")[0]
            raise ValueError(f"got {count} {what}(s) but {len(values)} {name}; give one weight per {what}")
        for w in values:
            if not (isinstance(w, (int, float)) and math.isfinite(w) and -10 <= w <= 10):
                raise ValueError(f"{name} must be finite numbers in [-10, 10], got {w!r}")
    return {"images": images, "image_weights": image_weights, "texts": texts, "text_weights": text_weights}
