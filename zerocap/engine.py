"""ZeroCap: a frozen causal LM writes, a frozen CLIP steers it through its key/value cache.

The engine is assembled once from parts chosen once: the LM and its family (families.py), the
form (forms.py: its LM adapter, how the scorer scores candidates, how many images decode
together), the scorer (scorer.py) and the input modes (modes.py). Pipeline of one decoding step
(`_step_logprobs`), each in its module:
  target.py        target embedding (an image, weighted images and texts, a clip's frames), per caption
  lm.py            the LM as prefill + one-token steps over a stacked key/value cache
  candidates.py    top-k candidate tokens -> CLIP token rows (scorer.py scores them)
  guide.py         candidate features -> the CLIP loss
  context_shift.py gradient steps on the LM cache
  token_rules.py   repetition / end / forbidden-token rules
  beam_search.py   length-normalised beam search over every image's beams
  rerank.py        best-by-CLIP and best-by-fluency among the final beams
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence

import torch
from torch.profiler import record_function

from . import forms
from .beam_search import Beams, first_step
from .config import ZeroCapConfig, preset
from .context_shift import shift_context
from .errors import InputError
from .families import lm_facts
from .guide import Guide
from .modes import TERMS_KIND, VIDEO, Target
from .rerank import clip_similarities, perplexities
from .scorer import ClipScorer, TextScorer
from .target import TargetEncoder, Term
from .token_rules import apply_token_rules

# Called after every decoding step with (step, max_tokens, best text so far of each image).
# It may raise (e.g. a cancellation) to stop decoding between steps.
Progress = Callable[[int, int, list[str]], None]


@dataclass
class Beam:
    text: str  # the generated continuation
    caption: str  # cond_text + text
    score: float  # beam-search score / length (mean log-prob)
    clip_score: float  # cosine similarity of the text's CLIP embedding with the target
    perplexity: float  # of BOS + text under the LM


@dataclass
class CaptionResult:
    beams: list[Beam]  # best first
    best_clip: str
    best_fluency: str
    best_mixed: str
    cond_text: str
    target: str  # what was captioned
    tokens: int  # decoding steps run
    seconds: float
    details: Any = None  # what the mode adds (e.g. a video's frames, video.VideoFrames): to_dict() or None

    @property
    def caption(self) -> str:
        return self.best_mixed

    def to_dict(self) -> dict:
        d = asdict(self)
        del d["details"]
        if self.details is not None:
            d.update(self.details.to_dict())
        d["timing"] = {
            "seconds": d.pop("seconds"),
            "tokens": d.pop("tokens"),
            "seconds_per_token": self.seconds / max(1, self.tokens),
        }
        return d


def fuse(logits: torch.Tensor, p0: torch.Tensor, fusion_factor: float, images: int) -> torch.Tensor:
    """Log of shifted^f x plain^(1-f) for rows (R, V), normalised per image as the authors do -> (n, b, V)."""
    probs = torch.softmax(logits, dim=-1)
    fused = (probs ** fusion_factor * p0 ** (1 - fusion_factor)).view(images, -1, logits.shape[-1])  # (n, b, V)
    total = torch.stack([f.sum() for f in fused])  # one scalar per image, summed as the authors do
    return (fused / total[:, None, None]).log()


class ZeroCap:
    """Zero-shot captioning and visual-semantic arithmetic with a frozen LM and a frozen CLIP.

    lm, tokenizer: a Hugging Face causal LM and its tokenizer; scorer: a scorer (scorer.py) or
    an OpenAI CLIP model with its `preprocess`; form: "fast" (the default) or "exact", or a
    forms.Form -- the same algorithm in two operation orders (see forms.py).
    """

    def __init__(
        self,
        lm,
        tokenizer,
        scorer,
        preprocess=None,
        device=None,
        form: "str | forms.Form" = "fast",
        bos_prefix: bool | None = None,
        forbidden_ids: Sequence[int] | None = None,
    ):
        self.form = forms.get(form)
        self.lm = lm.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.device = torch.device(device) if device is not None else next(lm.parameters()).device
        vocab = lm.get_output_embeddings().weight.shape[0]
        self.vocab_size = vocab
        self.facts = lm_facts(lm.config, tokenizer, vocab, bos_prefix)
        self.family = self.facts.family
        self.bos = tokenizer.bos_token or ""
        strings = tokenizer.batch_decode([[i] for i in range(len(tokenizer))], clean_up_tokenization_spaces=False)
        strings += [""] * (vocab - len(strings))  # padded embedding rows decode to nothing
        self.token_strings = strings[:vocab]
        ids = list(forbidden_ids) if forbidden_ids is not None else self.family.forbidden(self.token_strings)
        self.forbidden = torch.zeros(vocab, dtype=torch.bool, device=self.device)
        self.forbidden[torch.tensor(ids, dtype=torch.long)] = True

        self.scorer = scorer if isinstance(scorer, TextScorer) else ClipScorer(scorer, preprocess, self.device)
        self.scorer.use_vocabulary(self.token_strings)
        self.lm_adapter = self.form.lm(self.lm, self.family)
        self.targets = TargetEncoder(self.scorer)

    # ---- loading ------------------------------------------------------------------------------
    @classmethod
    def load(cls, lm: str = "weights/gpt2-medium", clip: str = "weights/clip/ViT-B-32.pt", device=None,
             lm_dtype: str = "float32", form: "str | forms.Form" = "fast") -> "ZeroCap":
        """Load an HF causal-LM directory and an OpenAI CLIP checkpoint, offline."""
        from .loading import load_models

        return cls(*load_models(lm, clip, device=device, lm_dtype=lm_dtype), form=form)

    # ---- public API ---------------------------------------------------------------------------
    @property
    def prompt_prefix(self) -> str:
        return self.facts.prompt_prefix

    def config(self, mode: str = "caption", **overrides) -> ZeroCapConfig:
        """The preset `mode` with overrides, validated against these models."""
        return self.check(preset(mode, **overrides))

    def check(self, cfg: ZeroCapConfig) -> ZeroCapConfig:
        """Validate `cfg` and check it against these models; InputError says what is wrong."""
        return self.facts.check(cfg, self.tokenizer, self.scorer.text_tokens, self.scorer.max_text_tokens)

    def prompt_ids(self, cfg: ZeroCapConfig) -> list[int]:
        return self.tokenizer.encode(self.facts.prompt_text(cfg.cond_text), add_special_tokens=False)

    def _begin(self, items, what: str, config, overrides: dict, names, default=None):
        """(checked config, the items as a list, their names) -- every entry point's opening."""
        cfg = self.check((config or default or ZeroCapConfig()).replace(**overrides))
        items = list(items) if isinstance(items, (list, tuple)) else [items]
        if not items and what != "term":
            raise InputError(f"give at least one {what}")
        names = list(names) if names else [image_name(x, i) for i, x in enumerate(items)]
        return cfg, items, names

    def caption(self, images, config: ZeroCapConfig | None = None, progress: Progress | None = None,
                names: Sequence[str] | None = None, **overrides) -> list[CaptionResult]:
        """Caption each image (paths or PIL images), decoded together; one result per image.

        names: how each result's `target` names its image (default: the path, or "image N").
        """
        cfg, images, names = self._begin(images, "image", config, overrides, names)
        targets = [Target(self.targets.image_target(im, n), n) for im, n in zip(images, names)]
        return self.decode_targets(targets, cfg, progress)

    def arithmetic(self, images: Sequence = (), weights: Sequence[float] | None = None,
                   texts: Sequence[str] = (), text_weights: Sequence[float] | None = None,
                   config: ZeroCapConfig | None = None, progress: Progress | None = None,
                   names: Sequence[str] | None = None, **overrides) -> CaptionResult:
        """Caption the weighted sum of image (and text) embeddings, e.g. woman + king - man."""
        cfg, images, labels = self._begin(images, "term", config, overrides, names, default=preset("arithmetic"))
        terms = [Term(w, image=im, label=n)
                 for im, w, n in zip(images, TERMS_KIND.weights(weights, len(images), "image"), labels)]
        terms += [Term(w, text=t) for t, w in zip(texts, TERMS_KIND.weights(text_weights, len(texts), "text"))]
        target = Target(self.targets.combine(terms), " ".join(t.describe() for t in terms))
        return self.decode_targets([target], cfg, progress)[0]

    def video(self, videos, frames: int | None = None, every: float | None = None,
              config: ZeroCapConfig | None = None, progress: Progress | None = None,
              names: Sequence[str] | None = None, **overrides) -> list[CaptionResult]:
        """Caption each video file (see zerocap/video.py): `frames` spread evenly (default 8), or a
        frame `every` so many seconds; each result's details say which distinct frames were used."""
        cfg, videos, names = self._begin(videos, "video", config, overrides, names)
        targets = [VIDEO.target(self, os.fspath(v), n, frames=frames, every=every) for v, n in zip(videos, names)]
        return self.decode_targets(targets, cfg, progress)

    def decode_targets(self, targets: Sequence[Target], cfg: ZeroCapConfig,
                       progress: Progress | None = None) -> list[CaptionResult]:
        """One caption per target (modes.Target), decoded together; each result names its target
        and carries what its mode adds."""
        results = self.decode(torch.stack([t.vector for t in targets]), cfg, [t.name for t in targets], progress)
        for result, target in zip(results, targets):
            result.details = target.details
        return results

    # ---- the decoder ----------------------------------------------------------------------------
    def decode(self, targets: torch.Tensor, cfg: ZeroCapConfig, names: Sequence[str] | None = None,
               progress: Progress | None = None) -> list[CaptionResult]:
        """Decode one caption per normalised target (N, D); N images share every LM/CLIP call."""
        N, most = targets.shape[0], self.form.max_images
        if most is not None and N > most:  # the form's batching policy (exact: one image at a time)
            return [r for i in range(0, N, most)
                    for r in self.decode(targets[i:i + most], cfg, names[i:i + most] if names else None, progress)]
        start = time.perf_counter()
        end_id = self.tokenizer.encode(cfg.end_token, add_special_tokens=False)[0]
        prompt = torch.tensor(self.prompt_ids(cfg), device=self.device)  # (P,)
        beams: Beams | None = None
        steps = torch.full((N,), cfg.max_tokens)  # steps each image took
        for step in range(cfg.max_tokens):
            if beams is None:  # one row per image until step 0 picks the beams
                active, rows = torch.arange(N, device=self.device), prompt.expand(N, 1, -1)
            else:
                active = beams.active()
                generated = beams.tokens[active]  # (n, B, t)
                rows = torch.cat([prompt.expand(*generated.shape[:2], -1), generated], dim=-1)  # (n, B, P + t)
            logprobs = self._step_logprobs(rows, targets[active], step, cfg, end_id)  # (n, b, V)
            if beams is None:
                beams = first_step(logprobs[:, 0], cfg.beam_size, end_id)
            else:
                beams.advance(active, logprobs, end_id)
            done = beams.done.cpu()
            steps[done & (steps == cfg.max_tokens)] = step + 1
            if progress is not None:
                progress(step + 1, cfg.max_tokens, self._best_texts(beams))
            if bool(done.all()):
                break
        seconds = time.perf_counter() - start
        return [self._result(beams, i, targets[i], cfg, names[i] if names else "", int(steps[i]), seconds / N)
                for i in range(N)]

    def _step_logprobs(self, rows: torch.Tensor, targets: torch.Tensor, step: int, cfg: ZeroCapConfig,
                       end_id: int) -> torch.Tensor:
        """Fused next-token log-probs (n, b, V) for rows (n images, b beams, T) with targets (n, D)."""
        n, b, T = rows.shape
        context = rows.reshape(n * b, T)  # (R, T)
        last = context[:, -1:]  # (R, 1)
        with record_function("zerocap.lm_prefill"):
            p0, past = self.lm_adapter.prefill(context)  # (R, V), (L, 2, R, H, T-1, hd)
        if past is not None and cfg.num_iterations > 0:
            candidates = self.form.candidates(self.scorer, self._prefix_texts(context))
            guide = Guide(candidates, targets.repeat_interleave(b, dim=0), cfg)
            past = shift_context(self.lm_adapter, past, last, p0, guide.loss, cfg)
        with torch.no_grad(), record_function("zerocap.lm_shifted_logits"):
            logits = self.lm_adapter.next_logits(last, past)  # (R, V)
        logits = apply_token_rules(logits, context, step, cfg, end_id, self.forbidden)
        return fuse(logits, p0, cfg.fusion_factor, n)

    def _prefix_texts(self, context: torch.Tensor) -> list[str]:
        texts = self.tokenizer.batch_decode(context.tolist(), clean_up_tokenization_spaces=False)
        return [t.replace(self.bos, "") if self.bos else t for t in texts]

    def _texts(self, tokens: torch.Tensor, lengths: torch.Tensor) -> list[str]:
        return [
            self.tokenizer.decode(row[: int(n)], clean_up_tokenization_spaces=False)
            for row, n in zip(tokens.tolist(), lengths.tolist())
        ]

    def _best_texts(self, beams: Beams) -> list[str]:
        best = beams.ranked()[:, 0]
        idx = torch.arange(best.shape[0], device=best.device)
        return self._texts(beams.tokens[idx, best], beams.lengths[idx, best])

    def _result(self, beams: Beams, i: int, target: torch.Tensor, cfg: ZeroCapConfig, name: str,
                steps: int, seconds: float) -> CaptionResult:
        order = beams.ranked()[i]
        texts = self._texts(beams.tokens[i][order], beams.lengths[i][order])
        scores = (beams.scores[i] / beams.lengths[i])[order].tolist()
        sims = clip_similarities(self.scorer, texts, target)
        ppls = perplexities(self.lm, self.tokenizer, texts, self.bos, self.device)
        caption = [cfg.cond_text + t for t in texts]
        out = [Beam(t, c, s, cs, p) for t, c, s, cs, p in zip(texts, caption, scores, sims, ppls)]
        best_clip = max(range(len(out)), key=lambda j: sims[j])
        best_ppl = min(range(len(out)), key=lambda j: ppls[j])
        return CaptionResult(out, caption[best_clip], caption[best_ppl], caption[0], cfg.cond_text, name,
                             steps, seconds)


def image_name(image, index: int) -> str:
    """How results and messages name an image: its path, or "image N" (1-based) for a picture."""
    return os.fspath(image) if isinstance(image, (str, os.PathLike)) else f"image {index + 1}"
