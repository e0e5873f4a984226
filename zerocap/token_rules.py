"""Token rules applied to the shifted logits before fusion, in the authors' order.

Each rule scales a logit away from or towards zero depending on its sign, so that "push down"
means the same thing for positive and negative logits. Every rule reads the current value,
so a token hit by two rules gets both.

Which tokens are forbidden is the LM family's rule (families.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch


def _damp(logits: torch.Tensor, mask: torch.Tensor, factor: torch.Tensor, inverse: torch.Tensor) -> torch.Tensor:
    """Where mask: positive logits / factor, the others / inverse (= 1 / factor, worked out in
    double precision as the authors' Python floats are) -- their `/=`, rounded the same way."""
    damped = torch.where(logits > 0, logits / factor, logits / inverse)
    return torch.where(mask, damped, logits)


def _boost(logits: torch.Tensor, mask: torch.Tensor, factor: torch.Tensor, inverse: torch.Tensor) -> torch.Tensor:
    """Where mask: positive logits * factor, the others * (1 / factor) -- the authors' `*=`."""
    boosted = torch.where(logits > 0, logits * factor, logits * inverse)
    return torch.where(mask, boosted, logits)


@dataclass
class Rules:
    """The token-rule values of a step's rows, each row at its own step: factors (R, 1) and their
    inverses, 1 where a rule does not apply to the row at its step (x / 1 and x * 1 are x)."""

    repetition: tuple[torch.Tensor, torch.Tensor] | None  # None: no row damps repetitions
    end: tuple[torch.Tensor, torch.Tensor]  # the boost, from end_factor_from on
    start: tuple[torch.Tensor, torch.Tensor]  # the damping at step 0
    forbidden: tuple[torch.Tensor, torch.Tensor]
    end_ids: torch.Tensor  # (R,) each row's end token

    @classmethod
    def of(cls, cfgs: Sequence, steps: Sequence[int], end_ids: Sequence[int], device) -> "Rules":
        def col(values):
            return (torch.tensor(values, dtype=torch.float32, device=device)[:, None],
                    torch.tensor([1 / v for v in values], dtype=torch.float32, device=device)[:, None])

        repetition = [c.repetition_penalty for c in cfgs]
        return cls(
            None if all(r == 1.0 for r in repetition) else col(repetition),
            col([c.end_factor if s >= c.end_factor_from else 1.0 for c, s in zip(cfgs, steps)]),
            col([c.start_end_penalty if s == 0 else 1.0 for c, s in zip(cfgs, steps)]),
            col([c.forbidden_factor for c in cfgs]),
            torch.tensor(list(end_ids), device=device),
        )


def apply_token_rules(
    logits: torch.Tensor,  # (R, V)
    recent: torch.Tensor,  # (R, k) each row's last (up to) 4 context tokens, repeats allowed
    rules: Rules,
    forbidden: torch.Tensor,  # (V,) bool
) -> torch.Tensor:
    R, V = logits.shape
    if rules.repetition is not None:
        seen = torch.zeros(R, V, dtype=torch.bool, device=logits.device)
        seen.scatter_(1, recent, True)  # the last 4 context tokens, each once
        logits = _damp(logits, seen, *rules.repetition)
    end = torch.zeros(R, V, dtype=torch.bool, device=logits.device)
    end.scatter_(1, rules.end_ids[:, None], True)
    logits = _boost(logits, end, *rules.end)
    logits = _damp(logits, end, *rules.start)
    return _damp(logits, forbidden, *rules.forbidden)
