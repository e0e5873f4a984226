"""ZeroCap: a frozen causal LM writes, a frozen CLIP steers it through its key/value cache.

Pipeline of one decoding step (`_step_logprobs`), each in its module:
  target.py        target embedding (an image, or weighted images and texts), once per caption
  lm.py            the LM as prefill + one-token steps over a stacked key/value cache
  candidates.py    top-k candidate tokens -> CLIP token rows
  guide.py         CLIP features of the candidates -> the CLIP loss (exact or cached guide)
  context_shift.py gradient steps on the LM cache
  token_rules.py   repetition / end / forbidden-token rules
  beam_search.py   length-normalised beam search over every image's beams
  rerank.py        best-by-CLIP and best-by-fluency among the final beams
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import torch
from torch.profiler import record_function

from .beam_search import Beams, first_step
from .candidates import CONTEXT_LENGTH, CandidateTokenizer
from .clip_scoring import ClipTextScorer
from .config import ZeroCapConfig, preset
from .context_shift import shift_context
from .errors import InputError
from .guide import CachedGuide, ExactGuide
from .lm import CachedLM
from .rerank import clip_similarities, perplexities
from .target import TargetEncoder, Term, check_weights
from .token_rules import apply_token_rules, forbidden_ids_for

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
    frame_times: list[float] | None = None  # a video's: the distinct frames (seconds) its target averages
    frames_asked: int | None = None  # a video's: the sampled times, which may fall on fewer distinct frames

    @property
    def caption(self) -> str:
        return self.best_mixed

    def to_dict(self) -> dict:
        d = asdict(self)
        if d["frame_times"] is None:
            del d["frame_times"], d["frames_asked"]
        else:
            d["frames"] = len(self.frame_times)
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

    exact=False (the default): the fast form -- CLIP prefix keys/values reused within a step, one
    LM pass per step, GPT-2's written-out one-token step. exact=True: the authors' operation
    order (CLIP's own encode_text on full rows, the LM cache from its own pass, one image at a
    time), for reproduction: in fp32 its scores equal a literal transcription of their code's to
    the last bit where both run the same kernels (seen with AVX-512), to rounding otherwise. Both
    forms are the same algorithm and give the same beams on every case compared (README).
    """

    def __init__(
        self,
        lm,
        tokenizer,
        clip_model,
        clip_preprocess,
        device=None,
        bos_prefix: bool | None = None,
        forbidden_ids: Sequence[int] | None = None,
        clip_tokenizer=None,
        exact: bool = False,
    ):
        import clip  # OpenAI CLIP (PyPI: clip-anytorch)

        self.lm = lm.eval().requires_grad_(False)
        self.clip = clip_model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.device = torch.device(device) if device is not None else next(lm.parameters()).device
        self.clip_tokenize = clip.tokenize
        self.exact = exact

        self.bos = tokenizer.bos_token or ""
        self.prompt_prefix, self.max_positions = prompt_facts(lm.config, tokenizer, bos_prefix)

        vocab = lm.get_output_embeddings().weight.shape[0]
        self.vocab_size = vocab
        strings = tokenizer.batch_decode([[i] for i in range(len(tokenizer))], clean_up_tokenization_spaces=False)
        strings += [""] * (vocab - len(strings))  # padded embedding rows decode to nothing
        self.token_strings = strings[:vocab]
        ids = list(forbidden_ids) if forbidden_ids is not None else forbidden_ids_for(self.token_strings)
        self.forbidden = torch.zeros(vocab, dtype=torch.bool, device=self.device)
        self.forbidden[torch.tensor(ids, dtype=torch.long)] = True

        self.cached_lm = CachedLM(self.lm, exact=exact)
        self.targets = TargetEncoder(self.clip, clip_preprocess, clip.tokenize, self.device)
        self.candidates = CandidateTokenizer(self.token_strings, clip_tokenizer or clip.clip._tokenizer, self.device)
        self.scorer = ClipTextScorer(self.clip)
        self.Guide = ExactGuide if exact else CachedGuide

    # ---- loading ------------------------------------------------------------------------------
    @classmethod
    def load(cls, lm: str = "weights/gpt2-medium", clip: str = "weights/clip/ViT-B-32.pt", device=None,
             lm_dtype: str = "float32", exact: bool = False) -> "ZeroCap":
        """Load an HF causal-LM directory and an OpenAI CLIP checkpoint, offline."""
        from .loading import load_models

        return cls(*load_models(lm, clip, device=device, lm_dtype=lm_dtype), exact=exact)

    # ---- public API ---------------------------------------------------------------------------
    def config(self, mode: str = "caption", **overrides) -> ZeroCapConfig:
        """The preset `mode` with overrides, validated against these models."""
        return self.check(preset(mode, **overrides))

    def check(self, cfg: ZeroCapConfig) -> ZeroCapConfig:
        """Validate `cfg` and check it against these models; InputError says what is wrong."""
        return check_config(cfg, self.tokenizer, self.vocab_size, self.prompt_prefix, self.max_positions,
                            self.candidates.encode)

    def prompt_ids(self, cfg: ZeroCapConfig) -> list[int]:
        return self.tokenizer.encode(self.prompt_prefix + cfg.cond_text, add_special_tokens=False)

    def caption(self, images, config: ZeroCapConfig | None = None, progress: Progress | None = None,
                names: Sequence[str] | None = None, **overrides) -> list[CaptionResult]:
        """Caption each image (paths or PIL images), decoded together; one result per image.

        names: how each result's `target` names its image (default: the path, or "image N").
        """
        cfg = self.check((config or ZeroCapConfig()).replace(**overrides))
        images = list(images) if isinstance(images, (list, tuple)) else [images]
        if not images:
            raise InputError("give at least one image")
        names = list(names) if names else [image_name(im, i) for i, im in enumerate(images)]
        targets = torch.stack([self.targets.image_target(im, n) for im, n in zip(images, names)])
        return self.decode(targets, cfg, names, progress)

    def arithmetic(self, images: Sequence = (), weights: Sequence[float] | None = None,
                   texts: Sequence[str] = (), text_weights: Sequence[float] | None = None,
                   config: ZeroCapConfig | None = None, progress: Progress | None = None,
                   names: Sequence[str] | None = None, **overrides) -> CaptionResult:
        """Caption the weighted sum of image (and text) embeddings, e.g. woman + king - man."""
        cfg = self.check((config or preset("arithmetic")).replace(**overrides))
        labels = list(names) if names else [image_name(im, i) for i, im in enumerate(images)]
        terms = [Term(w, image=im, label=n)
                 for im, w, n in zip(images, check_weights(images, weights, "image"), labels)]
        terms += [Term(w, text=t) for t, w in zip(texts, check_weights(texts, text_weights, "text"))]
        target = self.targets.combine(terms)[None]
        return self.decode(target, cfg, [" ".join(t.describe() for t in terms)], progress)[0]

    def video(self, videos, frames: int | None = None, every: float | None = None,
              config: ZeroCapConfig | None = None, progress: Progress | None = None,
              names: Sequence[str] | None = None, **overrides) -> list[CaptionResult]:
        """Caption each video file (see zerocap/video.py): `frames` spread evenly (default 8), or a
        frame `every` so many seconds; each result's `frame_times` says which frames were used."""
        from .video import video_target

        cfg = self.check((config or ZeroCapConfig()).replace(**overrides))
        videos = list(videos) if isinstance(videos, (list, tuple)) else [videos]
        if not videos:
            raise InputError("give at least one video")
        names = list(names) if names else [os.fspath(v) for v in videos]
        sampled = [video_target(self, os.fspath(v), n, frames, every) for v, n in zip(videos, names)]
        results = self.decode(torch.stack([t for t, _ in sampled]), cfg, names, progress)
        for result, (_, extra) in zip(results, sampled):
            result.frame_times, result.frames_asked = extra["frame_times"], extra["frames_asked"]
        return results

    # ---- the decoder ----------------------------------------------------------------------------
    def decode(self, targets: torch.Tensor, cfg: ZeroCapConfig, names: Sequence[str] | None = None,
               progress: Progress | None = None) -> list[CaptionResult]:
        """Decode one caption per normalised target (N, D); N images share every LM/CLIP call."""
        N = targets.shape[0]
        if self.exact and N > 1:  # batching changes matrix shapes, hence rounding
            return [r for i in range(N)
                    for r in self.decode(targets[i:i + 1], cfg, names[i:i + 1] if names else None, progress)]
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
            p0, past = self.cached_lm.prefill(context)  # (R, V), (L, 2, R, H, T-1, hd)
        if past is not None and cfg.num_iterations > 0:
            guide = self.Guide(self.candidates, self.scorer, self._prefix_texts(context),
                               targets.repeat_interleave(b, dim=0), cfg)
            past = shift_context(self.cached_lm, past, last, p0, guide.loss, cfg)
        with torch.no_grad(), record_function("zerocap.lm_shifted_logits"):
            logits = self.cached_lm.next_logits(last, past)  # (R, V)
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
        sims = clip_similarities(self.clip, self.clip_tokenize, texts, target)
        ppls = perplexities(self.lm, self.tokenizer, texts, self.bos, self.device)
        caption = [cfg.cond_text + t for t in texts]
        out = [Beam(t, c, s, cs, p) for t, c, s, cs, p in zip(texts, caption, scores, sims, ppls)]
        best_clip = max(range(len(out)), key=lambda j: sims[j])
        best_ppl = min(range(len(out)), key=lambda j: ppls[j])
        return CaptionResult(out, caption[best_clip], caption[best_ppl], caption[0], cfg.cond_text, name,
                             steps, seconds)


def prompt_facts(lm_config, tokenizer, bos_prefix: bool | None = None) -> tuple[str, int]:
    """(prompt prefix, positions) of an LM: the authors prefix BOS for GPT-2, not for GPT-Neo."""
    if bos_prefix is None:
        bos_prefix = getattr(lm_config, "model_type", "") == "gpt2"
    positions = getattr(lm_config, "n_positions", None) or getattr(lm_config, "max_position_embeddings", 1024)
    return (tokenizer.bos_token or "") if bos_prefix else "", positions


def check_config(cfg: ZeroCapConfig, tokenizer, vocab_size: int, prompt_prefix: str, max_positions: int,
                 clip_encode) -> ZeroCapConfig:
    """Validate `cfg` and check it against an LM's tokenizer and sizes and CLIP's tokenizer
    (`clip_encode(text) -> ids`): what ZeroCap.check does, without the models' weights."""
    cfg.validate()
    if cfg.top_k > vocab_size:
        raise InputError(f"top_k ({cfg.top_k}) must not exceed the LM vocabulary ({vocab_size})")
    if not prompt_prefix and not cfg.cond_text:
        raise InputError("cond_text must not be empty: this LM has no BOS prefix to start from")
    n_prompt = len(tokenizer.encode(prompt_prefix + cfg.cond_text, add_special_tokens=False))
    if n_prompt + cfg.max_tokens > max_positions:
        raise InputError(
            f"cond_text is too long for the LM: {n_prompt} prompt tokens + max_tokens {cfg.max_tokens}"
            f" exceed its {max_positions} positions"
        )
    n_clip = len(clip_encode(cfg.cond_text))
    if n_clip > CONTEXT_LENGTH - 3:
        raise InputError(
            f"cond_text is too long for CLIP: {n_clip} CLIP tokens; at most {CONTEXT_LENGTH - 3}"
            " leave room for a generated word"
        )
    if not tokenizer.encode(cfg.end_token, add_special_tokens=False):
        raise InputError(f"end_token {cfg.end_token!r} gives no LM token")
    return cfg


def image_name(image, index: int) -> str:
    """How results and messages name an image: its path, or "image N" (1-based) for a picture."""
    return os.fspath(image) if isinstance(image, (str, os.PathLike)) else f"image {index + 1}"
