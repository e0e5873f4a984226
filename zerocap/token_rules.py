"""Token rules applied to the shifted logits before fusion, in the authors' order.

Each rule scales a logit away from or towards zero depending on its sign, so that "push down"
means the same thing for positive and negative logits. Every rule reads the current value,
so a token hit by two rules gets both.

Which tokens are forbidden is the LM family's rule (families.py).
"""
from __future__ import annotations

import torch


def _damp(logits: torch.Tensor, mask: torch.Tensor, factor: float) -> torch.Tensor:
    """Where mask: positive logits / factor, the others / (1 / factor) -- the authors' `/=`,
    with the same Python-float divisor, so that results round the same way."""
    damped = torch.where(logits > 0, logits / factor, logits / (1 / factor))
    return torch.where(mask, damped, logits)


def _boost(logits: torch.Tensor, mask: torch.Tensor, factor: float) -> torch.Tensor:
    """Where mask: positive logits * factor, the others * (1 / factor) -- the authors' `*=`."""
    boosted = torch.where(logits > 0, logits * factor, logits * (1 / factor))
    return torch.where(mask, boosted, logits)


def apply_token_rules(
    logits: torch.Tensor,  # (R, V)
    context: torch.Tensor,  # (R, T) token ids
    step: int,
    cfg,
    end_id: int,
    forbidden: torch.Tensor,  # (V,) bool
) -> torch.Tensor:
    R, V = logits.shape
    r = cfg.repetition_penalty
    if r != 1.0:
        recent = torch.zeros(R, V, dtype=torch.bool, device=logits.device)
        recent.scatter_(1, context[:, -4:], True)  # the last 4 context tokens, each once
        logits = _damp(logits, recent, r)
    end = torch.zeros(V, dtype=torch.bool, device=logits.device)
    end[end_id] = True
    if step >= cfg.end_factor_from:
        logits = _boost(logits, end, cfg.end_factor)
    if step == 0:
        logits = _damp(logits, end, cfg.start_end_penalty)
    return _damp(logits, forbidden, cfg.forbidden_factor)
