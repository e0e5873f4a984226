"""Length-normalised beam search, batched over images: every tensor is (images, beams, ...).

A beam stops when it emits the end token; afterwards it can only append token 0 at no cost and
its length stops growing. Beams are ranked by score / length. An image is done when all its
beams stopped; only the active (not done) images are decoded further (`take`/`advance`/`put`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Beams:
    tokens: torch.Tensor  # (N, B, t) generated ids
    scores: torch.Tensor  # (N, B) summed log-probs
    lengths: torch.Tensor  # (N, B) float, tokens counted until the end token
    stopped: torch.Tensor  # (N, B) bool

    @property
    def done(self) -> torch.Tensor:
        """(N,) every beam of the image stopped."""
        return self.stopped.all(dim=1)

    def ranked(self) -> torch.Tensor:
        """(N, B) beam indices, best first by score / length."""
        return (self.scores / self.lengths).argsort(dim=1, descending=True)

    def active(self) -> torch.Tensor:
        """(n,) indices of the images still decoding."""
        return (~self.done).nonzero()[:, 0]

    def take(self, images: torch.Tensor) -> "Beams":
        """The beams of `images` (n,) only."""
        return Beams(self.tokens[images], self.scores[images], self.lengths[images], self.stopped[images])

    def put(self, images: torch.Tensor, sub: "Beams") -> None:
        """Write back the beams of `images` after a step; the other images' rows grow by a token 0."""
        tokens = torch.cat([self.tokens, torch.zeros_like(self.tokens[..., :1])], dim=-1)
        tokens[images] = sub.tokens
        self.tokens = tokens
        self.scores[images] = sub.scores
        self.lengths[images] = sub.lengths
        self.stopped[images] = sub.stopped

    def advance(self, images: torch.Tensor, logprobs: torch.Tensor, end_id: int) -> None:
        """One step of the images `images` (n,) with their next-token log-probs (n, B, V)."""
        self.put(images, next_step(self.take(images), logprobs, end_id)[0])


def first_step(logprobs: torch.Tensor, beam_size: int, end_id: int) -> Beams:
    """Start beams from the top tokens of each image's single prompt row  logprobs (N, V)."""
    scores, tokens = logprobs.topk(beam_size, dim=-1)  # (N, B)
    return Beams(
        tokens=tokens[..., None],
        scores=scores,
        lengths=torch.ones_like(scores),
        stopped=tokens.eq(end_id),
    )


def next_step(beams: Beams, logprobs: torch.Tensor, end_id: int) -> tuple[Beams, torch.Tensor]:
    """Advance every beam  logprobs (N, B, V) -> (new beams, source beam of each (N, B))."""
    N, B, V = logprobs.shape
    stopped = beams.stopped[..., None]  # (N, B, 1)
    logprobs = logprobs.masked_fill(stopped, float("-inf"))
    logprobs[..., 0] = torch.where(beams.stopped, 0.0, logprobs[..., 0])
    total = beams.scores[..., None] + logprobs  # (N, B, V)
    lengths = beams.lengths + (~beams.stopped).to(beams.lengths.dtype)  # (N, B)
    average = total / lengths[..., None]
    best, flat = average.view(N, B * V).topk(B, dim=-1)  # (N, B)
    source = flat // V
    token = flat % V
    lengths = lengths.gather(1, source)
    stopped = beams.stopped.gather(1, source) | token.eq(end_id)
    tokens = beams.tokens.gather(1, source[..., None].expand(-1, -1, beams.tokens.shape[-1]))
    new = Beams(
        tokens=torch.cat([tokens, token[..., None]], dim=-1),
        scores=best * lengths,
        lengths=lengths,
        stopped=stopped,
    )
    return new, source
