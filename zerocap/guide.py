"""CLIP guidance for one decoding step: the loss that pulls each row's next-token distribution
towards the candidates CLIP finds closest to the row's target.

At every context-shift iteration the top-k tokens of each row are candidates; the text
`prefix + token` of each is scored by the scorer (scorer.py; the form picks how), compared with
the target, and the softmax of those similarities (temperature `clip_temperature`) is the
distribution the LM is pulled towards (context_shift.py's loss):
    loss(row) = -sum_k q_k log p(token_k),   q = softmax(cos(CLIP(text_k), target) / T)
"""
from __future__ import annotations

import torch


class Guide:
    """One decoding step's CLIP loss for rows with fixed prefixes and targets.

    candidates: the scorer's candidate features for these rows' prefixes (`.features(top, valid)`);
    targets (R, D): each row's normalised target; top_k (R,): each row's own top-k (requests of
    other settings share a step); temperature: (R, 1), each row's; width: the
    candidates taken per row (default the largest top_k; a compiled step fixes it). A row's
    candidates past its own top_k are neither scored nor weighted (q = 0), so it gets the
    distribution it gets alone.
    """

    def __init__(self, candidates, targets: torch.Tensor, top_k: torch.Tensor, temperature: torch.Tensor,
                 width: int | None = None):
        self.candidates = candidates
        self.targets = targets[:, None, :]  # (R, 1, D)
        self.top_k = top_k
        self.width = width or int(top_k.max())
        self.temperature = temperature

    @torch.no_grad()
    def distribution(self, probs: torch.Tensor, live: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(top (R, K): each row's top-k tokens by probs (R, V), q (R, K) fp32: the distribution over
        them that CLIP prefers) -- what the context shift's loss pulls towards. live (R,): the rows
        still shifting (others get q = 0, their candidates unscored)."""
        top = probs.topk(self.width, dim=-1).indices  # (R, K)
        valid = torch.arange(self.width, device=probs.device) < self.top_k[:, None]  # (R, K)
        if live is not None:
            valid = valid & live[:, None]
        feats = self.candidates.features(top, valid)  # (R, K, D) normalised where valid
        sims = torch.bmm(self.targets.to(feats.dtype), feats.transpose(1, 2))[:, 0]  # (R, K)
        if bool(valid.all()):
            return top, torch.softmax(sims / self.temperature, dim=-1).float()
        q = torch.softmax((sims / self.temperature).masked_fill(~valid, float("-inf")), dim=-1).float()
        return top, q.masked_fill(~valid, 0.0)  # a row with no valid candidate: all 0, not NaN
