"""Context shift: a few gradient steps on the LM's key/value cache towards the CLIP target.

The shift δ has the shape of the stacked cache (layers, 2 = keys/values, rows, heads, T,
head_dim) and starts from zero at every decoding step (the authors' --reset_context_delta).
Rows may carry their own clip_scale, ce_scale and stepsize (requests decoded together); the
number of iterations and grad_norm_factor are the batch's.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch.profiler import record_function


@dataclass
class Shift:
    """The context-shift knobs of a step's rows."""

    iterations: int
    grad_norm_factor: float
    clip_scale: torch.Tensor  # (R,)
    ce_scale: torch.Tensor  # (R,)
    neg_stepsize: torch.Tensor  # (R,) -stepsize

    @classmethod
    def of(cls, cfgs: Sequence, device) -> "Shift":
        """From each row's config (the batch's rows share num_iterations and grad_norm_factor)."""
        col = lambda values: torch.tensor(values, dtype=torch.float32, device=device)  # noqa: E731
        return cls(cfgs[0].num_iterations, cfgs[0].grad_norm_factor, col([c.clip_scale for c in cfgs]),
                   col([c.ce_scale for c in cfgs]), col([-c.stepsize for c in cfgs]))


def shift_context(
    logits_of: Callable[[torch.Tensor], torch.Tensor],  # past (L, 2, R, H, T, hd) -> logits (R, V)
    past: torch.Tensor,  # (L, 2, R, H, T, hd)
    p0: torch.Tensor,  # (R, V) the plain LM's next-token probs
    clip_loss: Callable[[torch.Tensor], torch.Tensor],  # probs (R, V) -> per-row loss (R,)
    shift: Shift,
) -> torch.Tensor:
    """Return past + δ after `shift.iterations` normalised gradient steps."""
    delta = torch.zeros_like(past)
    log_p0 = p0.log()
    for _ in range(shift.iterations):
        delta.requires_grad_(True)
        with torch.enable_grad():
            with record_function("zerocap.lm_forward"):
                probs = torch.softmax(logits_of(past + delta), dim=-1)  # (R, V)
            # the authors' order of terms: autograd then sums the gradients in the same order
            loss = (shift.clip_scale * clip_loss(probs)).sum()
            fluency = shift.ce_scale * ((probs * probs.log()) - (probs * log_p0)).sum(-1)  # (R,)
            loss = loss + fluency.sum()
            with record_function("zerocap.lm_backward"):
                (grad,) = torch.autograd.grad(loss, delta)
        # one norm per layer, keys/values and row  # (L, 2, R, 1, 1, 1)
        norm = torch.linalg.vector_norm(grad.float(), dim=(3, 4, 5), keepdim=True) + 1e-15
        step = shift.neg_stepsize.view(1, 1, -1, 1, 1, 1).to(grad.dtype) * (grad / norm.to(grad.dtype)
                                                                             ** shift.grad_norm_factor)
        delta = (step + delta).detach()
    return past + delta
