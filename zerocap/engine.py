"""ZeroCap: a frozen causal LM writes, a frozen CLIP steers through its key/value cache.

Pipeline per decoding step (see the modules named):
  target.py        target embedding (image, or weighted images and texts)
  candidates.py    top-k candidate tokens -> CLIP token ids
  clip_scoring.py  CLIP features of the candidates, prefix keys/values cached
  context_shift.py gradient steps on the LM cache
  token_rules.py   repetition / end / forbidden-token rules
  beam_search.py   length-normalised beam search
  rerank.py        best-by-CLIP and best-by-fluency among the final beams
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from importlib import resources
from typing import Callable, Sequence

import torch
from torch.profiler import record_function

from .beam_search import Beams, first_step, next_step
from .candidates import CONTEXT_LENGTH, CandidateTokenizer
from .clip_scoring import ClipTextScorer, StepFeatures
from .config import ZeroCapConfig, preset
from .context_shift import CachedLM, shift_context
from .rerank import clip_similarities, perplexities
from .target import TargetEncoder, Term, check_weights
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
    extra: dict = field(default_factory=dict)

    @property
    def caption(self) -> str:
        return self.best_mixed

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("extra")
        d.update(self.extra)
        d["timing"] = {
            "seconds": d.pop("seconds"),
            "tokens": d.pop("tokens"),
            "seconds_per_token": self.seconds / max(1, self.tokens),
        }
        return d


def gpt2_forbidden_ids() -> list[int]:
    """The 917 GPT-2 token ids the paper's decoder pushes down."""
    text = resources.files("zerocap").joinpath("data/forbidden_tokens.json").read_text()
    return json.loads(text)["ids"]


def forbidden_ids_for(token_strings: list[str]) -> list[int]:
    """GPT-2's list for GPT-2's vocabulary; for another vocabulary the same rule applied to it:
    bare integers (no leading space or zero) and ( ) , ! : newline."""
    if len(token_strings) == 50257 and token_strings[:3] == ["!", '"', "#"]:
        return gpt2_forbidden_ids()
    marks = {"(", ")", ",", "!", ":", "\n"}
    return [
        i
        for i, s in enumerate(token_strings)
        if s in marks or (s.isascii() and s.isdigit() and (s == "0" or not s.startswith("0")))
    ]


class ZeroCap:
    """Zero-shot captioning and visual-semantic arithmetic with a frozen LM and a frozen CLIP."""

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
        exact: bool | None = None,
    ):
        import clip  # OpenAI CLIP (PyPI: clip-anytorch)

        self.lm = lm.eval().requires_grad_(False)
        self.clip = clip_model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.device = torch.device(device) if device is not None else next(lm.parameters()).device
        self.clip_tokenize = clip.tokenize
        clip_tokenizer = clip_tokenizer or clip.clip._tokenizer

        self.bos = tokenizer.bos_token or ""
        if bos_prefix is None:  # the authors prefix BOS for GPT-2, not for GPT-Neo
            bos_prefix = getattr(lm.config, "model_type", "") == "gpt2"
        self.prompt_prefix = self.bos if bos_prefix else ""
        self.max_positions = getattr(lm.config, "n_positions", None) or getattr(
            lm.config, "max_position_embeddings", 1024
        )

        vocab = lm.get_output_embeddings().weight.shape[0]
        self.vocab_size = vocab
        strings = tokenizer.batch_decode([[i] for i in range(len(tokenizer))], clean_up_tokenization_spaces=False)
        strings += [""] * (vocab - len(strings))  # padded embedding rows decode to nothing
        self.token_strings = strings[:vocab]
        ids = list(forbidden_ids) if forbidden_ids is not None else forbidden_ids_for(self.token_strings)
        self.forbidden = torch.zeros(vocab, dtype=torch.bool, device=self.device)
        self.forbidden[torch.tensor(ids, dtype=torch.long)] = True

        self.cached_lm = CachedLM(self.lm)
        self.targets = TargetEncoder(self.clip, clip_preprocess, clip.tokenize, self.device)
        self.candidates = CandidateTokenizer(self.token_strings, clip_tokenizer, self.device)
        self.scorer = ClipTextScorer(self.clip)
        # exact: the authors' operation order, so fp32 beams are bit-for-bit theirs (CLIP's own
        # encode_text on full 77-token rows; the LM cache from its own pass). Otherwise the
        # faster forms: CLIP prefix keys/values reused, one LM pass per step. Default: exact
        # when both models run in fp32.
        if exact is None:
            exact = self.clip.dtype == torch.float32 and next(lm.parameters()).dtype == torch.float32
        self.exact = exact

    # ---- loading ------------------------------------------------------------------------------
    @classmethod
    def load(cls, lm: str = "weights/gpt2-medium", clip: str = "weights/clip/ViT-B-32.pt", device=None,
             lm_dtype: str = "float32", exact: bool | None = None) -> "ZeroCap":
        """Load an HF causal-LM directory and an OpenAI CLIP checkpoint, offline."""
        from .loading import load_models

        return cls(*load_models(lm, clip, device=device, lm_dtype=lm_dtype), exact=exact)

    # ---- public API ---------------------------------------------------------------------------
    def config(self, mode: str = "caption", **overrides) -> ZeroCapConfig:
        """The preset `mode` with overrides, validated against these models."""
        return self.check(preset(mode, **overrides))

    def check(self, cfg: ZeroCapConfig) -> ZeroCapConfig:
        cfg.validate()
        if cfg.top_k > self.vocab_size:
            raise ValueError(f"top_k ({cfg.top_k}) must not exceed the LM vocabulary ({self.vocab_size})")
        if not self.prompt_prefix and not cfg.cond_text:
            raise ValueError("cond_text must not be empty: this LM has no BOS prefix to start from")
        n_prompt = len(self.prompt_ids(cfg))
        if n_prompt + cfg.max_tokens > self.max_positions:
            raise ValueError(
                f"cond_text is too long for the LM: {n_prompt} prompt tokens + max_tokens {cfg.max_tokens}"
                f" exceed its {self.max_positions} positions"
            )
        n_clip = len(self.candidates.encode(cfg.cond_text))
        if n_clip > CONTEXT_LENGTH - 3:
            raise ValueError(
                f"cond_text is too long for CLIP: {n_clip} CLIP tokens; at most {CONTEXT_LENGTH - 3}"
                " leave room for a generated word"
            )
        if not self.tokenizer.encode(cfg.end_token, add_special_tokens=False):
            raise ValueError(f"end_token {cfg.end_token!r} gives no LM token")
        return cfg

    def prompt_ids(self, cfg: ZeroCapConfig) -> list[int]:
        return self.tokenizer.encode(self.prompt_prefix + cfg.cond_text, add_special_tokens=False)

    def caption(self, images, config: ZeroCapConfig | None = None, progress: Progress | None = None,
                seed: int | None = None, names: Sequence[str] | None = None, **overrides) -> list[CaptionResult]:
        """Caption each image (paths or PIL images), decoded together; one result per image."""
        cfg = self.check((config or ZeroCapConfig()).replace(**overrides))
        images = list(images) if isinstance(images, (list, tuple)) else [images]
        if not images:
            raise ValueError("give at least one image")
        targets = torch.stack([self.targets.image_target(im) for im in images])
        names = list(names) if names else [str(im) if not hasattr(im, "size") else "<image>" for im in images]
        return self.decode(targets, cfg, names, progress, seed)

    def arithmetic(self, images: Sequence = (), weights: Sequence[float] | None = None,
                   texts: Sequence[str] = (), text_weights: Sequence[float] | None = None,
                   config: ZeroCapConfig | None = None, progress: Progress | None = None,
                   seed: int | None = None, names: Sequence[str] | None = None, **overrides) -> CaptionResult:
        """Caption the weighted sum of image (and text) embeddings, e.g. woman + king - man."""
        cfg = self.check((config or preset("arithmetic")).replace(**overrides))
        labels = list(names) if names else [None] * len(images)
        terms = [Term(w, image=im, label=n)
                 for im, w, n in zip(images, check_weights(images, weights, "image"), labels)]
        terms += [Term(w, text=t) for t, w in zip(texts, check_weights(texts, text_weights, "text"))]
        target = self.targets.combine(terms)[None]
        return self.decode(target, cfg, [" ".join(t.describe() for t in terms)], progress, seed)[0]

    # ---- the decoder ----------------------------------------------------------------------------
    def decode(self, targets: torch.Tensor, cfg: ZeroCapConfig, names: Sequence[str] | None = None,
               progress: Progress | None = None, seed: int | None = None) -> list[CaptionResult]:
        """Decode one caption per normalised target (N, D); N images share every LM/CLIP call."""
        if seed is not None:
            torch.manual_seed(seed)
        if self.exact and targets.shape[0] > 1:  # batching changes matrix shapes, hence rounding
            return [r for i in range(targets.shape[0])
                    for r in self.decode(targets[i:i + 1], cfg, names[i:i + 1] if names else None, progress)]
        start = time.perf_counter()
        N, B = targets.shape[0], cfg.beam_size
        end_id = self.tokenizer.encode(cfg.end_token, add_special_tokens=False)[0]
        prompt = torch.tensor(self.prompt_ids(cfg), device=self.device)
        context = prompt.expand(N, 1, -1)  # (N, rows per image, T): one row until step 0 picks B
        beams: Beams | None = None
        steps = torch.full((N,), cfg.max_tokens)  # steps each image took
        for step in range(cfg.max_tokens):
            active = torch.arange(N, device=self.device) if beams is None else (~beams.done).nonzero()[:, 0]
            rows = context[active]  # (n, b, T)
            T = rows.shape[-1]
            logprobs = self._step_logprobs(rows, targets[active], step, cfg, end_id)  # (n, b, V)
            if beams is None:
                beams = first_step(logprobs[:, 0], B, end_id)
                context = torch.cat([context.expand(N, B, T), beams.tokens], dim=-1)
            else:
                sub = Beams(beams.tokens[active], beams.scores[active], beams.lengths[active], beams.stopped[active])
                sub, source = next_step(sub, logprobs, end_id)
                moved = rows.gather(1, source[..., None].expand(-1, -1, T))
                new_context = torch.cat([context, context[:, :, -1:]], dim=-1)  # finished images repeat
                new_context[active] = torch.cat([moved, sub.tokens[..., -1:]], dim=-1)
                context = new_context
                pad = torch.zeros_like(beams.tokens[..., :1])
                tokens = torch.cat([beams.tokens, pad], dim=-1)
                tokens[active] = sub.tokens
                beams.tokens = tokens
                beams.scores[active] = sub.scores
                beams.lengths[active] = sub.lengths
                beams.stopped[active] = sub.stopped
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
        row_targets = targets.repeat_interleave(b, dim=0)  # (R, D)
        with record_function("zerocap.lm_prefill"):
            p0, past = self.cached_lm.prefill(context, exact=self.exact)  # (R, V), (L, 2, R, H, T-1, hd)
        last = context[:, -1:]
        if past is not None and cfg.num_iterations > 0:
            prefixes = [self.candidates.prefix(t) for t in self._prefix_texts(context)]
            prefix_rows = self.candidates.pad([p.row for p in prefixes])  # (R, P)
            if not self.exact:
                with record_function("zerocap.clip_prefix"):
                    prefix_cache = self.scorer.encode_prefix(prefix_rows)
                seen = StepFeatures(n * b, self.vocab_size, self.device)
            target_rows = row_targets.to(self.clip.dtype)[:, None, :]  # (R, 1, D)

            def clip_loss(probs: torch.Tensor) -> torch.Tensor:  # (R, V) -> (R,)
                with torch.no_grad():
                    top = probs.topk(cfg.top_k, dim=-1).indices  # (R, K)
                    new = None if self.exact else seen.missing(top)  # fast form: only unseen candidates
                    with record_function("zerocap.candidate_rows"):
                        shared, suffix, eot = self.candidates.rows(prefixes, top, needed=new)
                    with record_function("zerocap.clip_candidates"):
                        if self.exact:
                            feats = self.scorer.encode_full(prefix_rows, shared, suffix, eot)  # (R, K, D)
                        else:
                            feats = self.scorer.encode_candidates(prefix_cache, shared, suffix, eot, needed=new)
                            feats = seen.update(top, new, feats)
                    sims = torch.bmm(target_rows, feats.transpose(1, 2))[:, 0]  # (R, K)
                    q = torch.softmax(sims / cfg.clip_temperature, dim=-1).float()
                return -(q * probs.gather(1, top).log()).sum(-1)

            with torch.enable_grad():
                past = shift_context(self.cached_lm, past, last, p0, clip_loss, cfg, fast=not self.exact)
        with torch.no_grad(), record_function("zerocap.lm_shifted_logits"):
            logits = self.cached_lm.next_logits(last, past, fast=not self.exact)
        logits = apply_token_rules(logits, context, step, cfg, end_id, self.forbidden)
        probs = torch.softmax(logits, dim=-1)
        fused = (probs ** cfg.fusion_factor * p0 ** (1 - cfg.fusion_factor)).view(n, b, -1)  # (n, b, V)
        total = torch.stack([f.sum() for f in fused])  # one scalar per image, summed as the authors do
        fused = fused / total[:, None, None]
        return fused.log()

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
