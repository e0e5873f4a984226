"""CLIP guidance for one decoding step: the loss that pulls each row's next-token distribution
towards the candidates CLIP finds closest to the row's target.

At every context-shift iteration the top-k tokens of each row are candidates; the text
`prefix + token` of each is encoded by CLIP, compared with the target, and the softmax of those
similarities (temperature `clip_temperature`) is the distribution the LM is pulled towards:
    loss(row) = -sum_k q_k log p(token_k),   q = softmax(cos(CLIP(text_k), target) / T)

Two guides compute the same CLIP features of the candidates; the engine picks one for good:
  ExactGuide   CLIP's own `encode_text` on full 77-token rows, every iteration: the authors'
               operation order, so in fp32 the scores are theirs to the last bit where the same
               kernels run (AVX-512 CPUs), to rounding otherwise;
  CachedGuide  each row's prefix is encoded once per step and only the candidates' few suffix
               tokens run, attending to the prefix's keys/values; a candidate's features are kept
               for the step, so later iterations encode only candidates not seen yet.
"""
from __future__ import annotations

import torch
from torch.profiler import record_function

from .candidates import CandidateTokenizer
from .clip_scoring import ClipTextScorer


class StepFeatures:
    """CLIP features of the (row, token) candidates met so far in one decoding step.

    Within a step the prefixes are fixed, so a candidate's text, hence its features, depends
    only on (row, token). The top-k of successive context-shift iterations overlap heavily
    (3.5x repeats on the tests' random models), so each iteration encodes only the candidates
    no earlier iteration ranked.
    """

    def __init__(self, rows: int, vocab: int, device):
        self.slot = torch.full((rows, vocab), -1, dtype=torch.int32, device=device)  # (R, V) into table
        self.table: torch.Tensor | None = None  # (n, D)

    def missing(self, top: torch.Tensor) -> torch.Tensor:
        """(R, K) bool: candidates `top` (R, K) not seen yet."""
        return self.slot.gather(1, top) < 0

    def update(self, top: torch.Tensor, new: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        """Store the rows `new` (R, K) of feats (R, K, D); return the features of all of `top`."""
        r, k = new.nonzero(as_tuple=True)
        start = 0 if self.table is None else self.table.shape[0]
        self.slot[r, top[r, k]] = torch.arange(start, start + r.numel(), dtype=torch.int32, device=r.device)
        fresh = feats[r, k]  # (m, D)
        self.table = fresh if self.table is None else torch.cat([self.table, fresh])
        return self.table[self.slot.gather(1, top).long()]  # (R, K, D)


class Guide:
    """One decoding step's CLIP guidance for rows with fixed prefixes and targets."""

    def __init__(self, candidates: CandidateTokenizer, scorer: ClipTextScorer, prefix_texts: list[str],
                 targets: torch.Tensor, cfg):
        self.candidates, self.scorer = candidates, scorer
        self.prefixes = [candidates.prefix(t) for t in prefix_texts]
        self.prefix_rows = candidates.pad([p.row for p in self.prefixes])  # (R, P): SOT + prefix ids
        self.targets = targets.to(scorer.dtype)[:, None, :]  # (R, 1, D), normalised
        self.top_k, self.temperature = cfg.top_k, cfg.clip_temperature

    def features(self, top: torch.Tensor) -> torch.Tensor:
        """Normalised CLIP features (R, K, D) of the texts prefix + token for candidates top (R, K)."""
        raise NotImplementedError

    def loss(self, probs: torch.Tensor) -> torch.Tensor:
        """Per-row CLIP loss (R,) of next-token probs (R, V); differentiable in probs."""
        with torch.no_grad():
            top = probs.topk(self.top_k, dim=-1).indices  # (R, K)
            feats = self.features(top)  # (R, K, D)
            sims = torch.bmm(self.targets, feats.transpose(1, 2))[:, 0]  # (R, K)
            q = torch.softmax(sims / self.temperature, dim=-1).float()
        return -(q * probs.gather(1, top).log()).sum(-1)


class ExactGuide(Guide):
    """CLIP's own `encode_text` on full 77-token rows (the authors' operation order)."""

    def features(self, top):
        with record_function("zerocap.candidate_rows"):
            shared, suffix, eot = self.candidates.rows(self.prefixes, top)
        with record_function("zerocap.clip_candidates"):
            return self.scorer.encode_full(self.prefix_rows, shared, suffix, eot)


class CachedGuide(Guide):
    """Prefix keys/values once per step, only the suffixes per iteration, features kept for the step."""

    def __init__(self, candidates, scorer, prefix_texts, targets, cfg):
        super().__init__(candidates, scorer, prefix_texts, targets, cfg)
        with record_function("zerocap.clip_prefix"):
            self.cache = scorer.encode_prefix(self.prefix_rows)
        self.seen = StepFeatures(len(self.prefixes), len(candidates.strings), self.prefix_rows.device)

    def features(self, top):
        new = self.seen.missing(top)  # (R, K) only candidates no earlier iteration ranked
        with record_function("zerocap.candidate_rows"):
            shared, suffix, eot = self.candidates.rows(self.prefixes, top, needed=new)
        with record_function("zerocap.clip_candidates"):
            feats = self.scorer.encode_candidates(self.cache, shared, suffix, eot, needed=new)
        return self.seen.update(top, new, feats)
