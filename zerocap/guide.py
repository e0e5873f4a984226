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

    candidates: the scorer's candidate features for these rows' prefixes (`.features(top)`);
    targets (R, D): each row's normalised target; temperature: (R, 1), each row's.
    """

    def __init__(self, candidates, targets: torch.Tensor, top_k: int, temperature: torch.Tensor):
        self.candidates = candidates
        self.targets = targets[:, None, :]  # (R, 1, D)
        self.top_k, self.temperature = top_k, temperature

    @torch.no_grad()
    def distribution(self, probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(top (R, K): each row's top-k tokens by probs (R, V), q (R, K) fp32: the distribution over
        them that CLIP prefers) -- what the context shift's loss pulls towards."""
        top = probs.topk(self.top_k, dim=-1).indices  # (R, K)
        feats = self.candidates.features(top)  # (R, K, D) normalised
        sims = torch.bmm(self.targets.to(feats.dtype), feats.transpose(1, 2))[:, 0]  # (R, K)
        return top, torch.softmax(sims / self.temperature, dim=-1).float()
