"""Context shift: a few gradient steps on the LM's key/value cache towards the CLIP target.

The shift δ has the shape of the stacked cache (layers, 2 = keys/values, rows, heads, T-1,
head_dim) and starts from zero at every decoding step (the authors' --reset_context_delta).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch.profiler import record_function



def shift_context(
    lm,  # lm.py's adapter: next_logits(last, past)
    past: torch.Tensor,  # (L, 2, R, H, T-1, hd)
    last: torch.Tensor,  # (R, 1)
    p0: torch.Tensor,  # (R, V) the plain LM's next-token probs
    clip_loss: Callable[[torch.Tensor], torch.Tensor],  # probs (R, V) -> per-row loss (R,)
    cfg,
) -> torch.Tensor:
    """Return past + δ after cfg.num_iterations normalised gradient steps."""
    delta = torch.zeros_like(past)
    log_p0 = p0.log()
    for _ in range(cfg.num_iterations):
        delta.requires_grad_(True)
        with torch.enable_grad():
            with record_function("zerocap.lm_forward"):
                probs = torch.softmax(lm.next_logits(last, past + delta), dim=-1)  # (R, V)
            # the authors' order of terms: autograd then sums the gradients in the same order
            loss = cfg.clip_scale * clip_loss(probs).sum()
            fluency = cfg.ce_scale * ((probs * probs.log()) - (probs * log_p0)).sum(-1)  # (R,)
            loss = loss + fluency.sum()
            with record_function("zerocap.lm_backward"):
                (grad,) = torch.autograd.grad(loss, delta)
        # one norm per layer, keys/values and row  # (L, 2, R, 1, 1, 1)
        norm = torch.linalg.vector_norm(grad.float(), dim=(3, 4, 5), keepdim=True) + 1e-15
        step = -cfg.stepsize * (grad / norm.to(grad.dtype) ** cfg.grad_norm_factor)
        delta = (step + delta).detach()
    return past + delta
