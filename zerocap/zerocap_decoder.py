"""ZeroCap's method on an engine's models: its requests, their batch's results, what a caption's
progress shows (Tewel et al., CVPR 2022; the engine holds the models, batch.py steps the requests).

A peer of the other methods (methods.py registers it; pseudo_tokens/decoder.py is the other): the
engine asks it to `check` a config and make a `request`; the request's batch (batch.py) asks it for
a finished request's `result` and a running one's `best_text`.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import torch

from .batch import Request
from .beam_search import Beams
from .config import ZeroCapConfig
from .families import lm_facts
from .limits import CLIP_PROMPT_TOKENS
from .modes import Target
from .outputs import Out, Recorded
from .rerank import clip_similarities, perplexities


@dataclass
class Beam:
    text: str  # the generated continuation
    caption: str  # cond_text + text
    score: float  # beam-search score / length (mean log-prob)
    clip_score: float  # cosine similarity of the text's CLIP embedding with the target
    perplexity: float  # of BOS + text under the LM


@dataclass
class CaptionResult(Recorded):
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

    def container_fields(self) -> dict:
        """This method's fields of the container's output (OUTPUTS says what each holds)."""
        d = self.mode_details()
        return dict(caption=self.best_mixed, best_clip=self.best_clip, best_fluency=self.best_fluency,
                    best_mixed=self.best_mixed, beams=[b.caption for b in self.beams],
                    beam_scores=[b.score for b in self.beams], clip_scores=[b.clip_score for b in self.beams],
                    perplexities=[b.perplexity if math.isfinite(b.perplexity) else -1.0 for b in self.beams],
                    seed=-1, frames_asked=d.get("frames_asked", 0),
                    frames_sampling=f"{d['frames_asked']} frames spread evenly" if "frames_asked" in d else "")


# The container's output of ZeroCap's method: every field it fills, and what it holds (outputs.py;
# the README's output table and predict.py's Output are made from it).
OUTPUTS = {
    "caption": Out("str", "the beam-search winner (= best_mixed)"),
    "best_clip": Out("str", "the beam closest to the target in CLIP space"),
    "best_fluency": Out("str", "the beam with the lowest LM perplexity"),
    "best_mixed": Out("str", "the beam-search winner"),
    "beams": Out("list[str]", "every beam's caption, best first"),
    "beam_scores": Out("list[float]", "each beam's mean log-probability per token"),
    "clip_scores": Out("list[float]", "each beam's cosine similarity with the target"),
    "perplexities": Out("list[float]", "each beam's LM perplexity; -1 where undefined"),
    "method": Out("str", "zerocap"),
    "seed": Out("int", "-1 (the method is deterministic)", empty=-1),
    "mode": Out("str", "the mode"),
    "target": Out("str", "what was captioned: the file name as sent (\"image\" for a data URL, \"video\" for a"
                         " clip's), or the arithmetic expression"),
    "cond_text": Out("str", "the prompt the captions continue"),
    "tokens": Out("int", "decoding steps run"),
    "seconds": Out("float", "decoding time, reranking included"),
    "frame_times": Out("list[float]", "mode video: the distinct frames (seconds) the caption describes; else empty"),
    "frames": Out("int", "mode video: how many distinct frames that is; else 0"),
    "frames_asked": Out("int", "mode video: frames asked for (times falling on one frame count it once); else 0"),
    "frames_sampling": Out("str", "mode video: how the frames were sampled, in words (\"8 frames spread evenly\");"
                                  " else empty"),
}


class ZeroCapDecoder:
    """ZeroCap's method on one engine's models."""

    name = "zerocap"
    Config = ZeroCapConfig

    def __init__(self, engine):
        self.engine = engine

    def check(self, cfg: ZeroCapConfig) -> ZeroCapConfig:
        """Validate `cfg` and check it against the models; InputError says what is wrong."""
        e = self.engine
        return e.facts.check(cfg, e.tokenizer, e.scorer.text_tokens, e.scorer.max_text_tokens)

    def request(self, target: Target, cfg: ZeroCapConfig, on_step=None) -> Request:
        """A checked config's caption of `target`, ready to join a batch; on_step(decoding.Snapshot)
        after each of its steps."""
        e = self.engine
        end_id = e.vocabulary.end_id(cfg.end_token)
        return Request(target.vector.to(e.device), cfg, target.name, e.prompt_ids(cfg), end_id, target.details,
                       on_step, decoder=self)

    def _texts(self, prompt: list[int], tokens: torch.Tensor, lengths: torch.Tensor) -> list[str]:
        """The texts the beams' tokens add after the prompt."""
        vocabulary = self.engine.vocabulary
        return [vocabulary.text_after(prompt, row[: int(n)]) for row, n in zip(tokens.tolist(), lengths.tolist())]

    def best_text(self, beams: Beams, prompt: list[int]) -> str:
        """The best beam's text so far, of a request's beams (1, B, ...)."""
        best = int(beams.ranked()[0, 0])
        return self._texts(prompt, beams.tokens[0, best:best + 1], beams.lengths[0, best:best + 1])[0]

    def result(self, request: Request) -> CaptionResult:
        """A finished request's result: its beams reranked by CLIP and by fluency."""
        e, beams, cfg = self.engine, request.beams, request.cfg
        order = beams.ranked()[0]
        texts = self._texts(request.prompt, beams.tokens[0][order], beams.lengths[0][order])
        scores = (beams.scores[0] / beams.lengths[0])[order].tolist()
        sims = clip_similarities(e.scorer, texts, request.target)
        ppls = perplexities(e.lm, e.vocabulary, texts, e.device)
        caption = [cfg.cond_text + t for t in texts]
        out = [Beam(t, c, s, cs, p) for t, c, s, cs, p in zip(texts, caption, scores, sims, ppls)]
        best_clip = max(range(len(out)), key=lambda j: sims[j])
        best_ppl = min(range(len(out)), key=lambda j: ppls[j])
        seconds = time.perf_counter() - request.joined
        return CaptionResult(out, caption[best_clip], caption[best_ppl], caption[0], cfg.cond_text, request.name,
                             request.steps_taken, seconds, request.details)


def check_without_models(cfg: ZeroCapConfig, lm: str) -> ZeroCapConfig:
    """ZeroCap's check from the LM's tokenizer and config alone, no weights loaded (a Ray driver's,
    before the actors start): what ZeroCap.check says of the same config."""
    import clip
    from transformers import AutoConfig, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(lm, local_files_only=True)
    facts = lm_facts(AutoConfig.from_pretrained(lm, local_files_only=True), tokenizer)
    return facts.check(cfg, tokenizer, lambda text: len(clip.clip._tokenizer.encode(text)), CLIP_PROMPT_TOKENS.hi)
