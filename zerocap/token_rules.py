"""Token rules applied to the shifted logits before fusion, in the authors' order.

Each rule scales a logit away from or towards zero depending on its sign, so that "push down"
means the same thing for positive and negative logits. Every rule reads the current value,
so a token hit by two rules gets both.

Forbidden tokens: the paper's decoder pushes down bare numbers and a few marks. For GPT-2's
vocabulary (GPT-Neo's too) the list is the authors' own, 917 ids. For another vocabulary the
list comes from the rule that describes theirs: a token whose text is ASCII digits only, with
no leading space and no leading zero ("0" itself included), or one of ( ) , ! : and newline.
On GPT-2's vocabulary that rule gives 919 ids: the authors' 917 plus "200000" and "66666666",
which their list lacks.
"""
from __future__ import annotations

import json
from importlib import resources
from typing import Sequence

import torch

MARKS = ("(", ")", ",", "!", ":", "\n")


def gpt2_forbidden_ids() -> list[int]:
    """The authors' 917 GPT-2 token ids."""
    text = resources.files("zerocap").joinpath("data/forbidden_tokens.json").read_text()
    return json.loads(text)["ids"]


def forbidden_by_rule(token_strings: Sequence[str]) -> list[int]:
    """Ids of bare integers (ASCII digits, no leading space, no leading zero but "0") and marks."""
    return [i for i, s in enumerate(token_strings)
            if s in MARKS or (s.isascii() and s.isdigit() and (s == "0" or not s.startswith("0")))]


def is_gpt2_vocabulary(token_strings: Sequence[str]) -> bool:
    return len(token_strings) == 50257 and list(token_strings[:3]) == ["!", '"', "#"]


def forbidden_ids_for(token_strings: Sequence[str]) -> list[int]:
    """The authors' list for GPT-2's vocabulary, the rule (see above) for any other."""
    return gpt2_forbidden_ids() if is_gpt2_vocabulary(token_strings) else forbidden_by_rule(token_strings)


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
