"""Context shift: a few gradient steps on the LM's key/value cache towards the CLIP target.

The shift δ has the shape of the stacked cache (layers, 2 = keys/values, rows, heads, T,
head_dim) and starts from zero at every decoding step (the authors' --reset_context_delta).
Every row carries its own knobs -- iterations, grad_norm_factor, clip_scale, ce_scale, stepsize
(requests of any settings decoded together): a step runs the most iterations any row asks for,
and a row whose own are done keeps its shift (step size 0).

One iteration: the shifted LM's next-token probs; the CLIP target distribution q over their
top-k (guide.py, outside the gradient); the loss  clip_scale * CLIP loss + ce_scale * KL(shifted
|| plain); its gradient in δ, normalised per layer, keys/values and row; a step. Two ways to run
it, the same arithmetic (`loss`, `update`):
  shift_context   eagerly, autograd on the forward pass that gave the top-k
  iteration()     as one function of static shapes -- (δ, q, top-k) -> (next δ, its logits) --
                  for torch.compile to capture once and replay (lm.py's compiled step); it
                  recomputes the forward it differentiates, as q comes from outside it
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple, Sequence

import torch
from torch.profiler import record_function


class At(NamedTuple):
    """What the LM's one-token step reads: the rows' last tokens and their cached past."""

    last: torch.Tensor  # (R, 1)
    past: torch.Tensor | None  # (L, 2, R, H, T, hd); None before any token is cached
    positions: torch.Tensor | None  # (R,) each row's length, for a cache of rows of other lengths (else None)
    mask: torch.Tensor | None  # (R, T) the cache's valid positions (else None)


class Weights(NamedTuple):
    """One iteration's weights, (R,) each, a row its own."""

    clip_scale: torch.Tensor
    ce_scale: torch.Tensor
    neg_stepsize: torch.Tensor  # -stepsize; 0 for a row whose iterations are done
    grad_norm_factor: torch.Tensor


@dataclass
class Shift:
    """The context-shift knobs of a step's rows: every row its own (requests of any settings
    share a step). A row runs its own number of iterations; after them its shift is frozen (its
    step size is 0), so it ends where it ends alone."""

    iterations: torch.Tensor  # (R,) long
    grad_norm_factor: torch.Tensor  # (R,)
    clip_scale: torch.Tensor  # (R,)
    ce_scale: torch.Tensor  # (R,)
    neg_stepsize: torch.Tensor  # (R,) -stepsize

    @classmethod
    def of(cls, cfgs: Sequence, device) -> "Shift":
        """From each row's config."""
        col = lambda values: torch.tensor(values, dtype=torch.float32, device=device)  # noqa: E731
        return cls(torch.tensor([c.num_iterations for c in cfgs], dtype=torch.long, device=device),
                   col([c.grad_norm_factor for c in cfgs]), col([c.clip_scale for c in cfgs]),
                   col([c.ce_scale for c in cfgs]), col([-c.stepsize for c in cfgs]))

    @property
    def most(self) -> int:
        """Iterations the step runs: the most any row asks for."""
        return int(self.iterations.max()) if self.iterations.numel() else 0

    def live(self, i: int) -> torch.Tensor:
        """(R,) bool: the rows that still shift at iteration i."""
        return self.iterations > i

    def weights(self, i: int) -> Weights:
        """Iteration i's weights: a row whose own iterations are done steps by 0."""
        live = self.live(i)
        return Weights(self.clip_scale, self.ce_scale, self.neg_stepsize * live, self.grad_norm_factor)


def loss(probs: torch.Tensor, top: torch.Tensor, q: torch.Tensor, log_p0: torch.Tensor, clip_scale: torch.Tensor,
         ce_scale: torch.Tensor) -> torch.Tensor:
    """The shift's loss (a scalar) of shifted probs (R, V): CLIP's -sum_k q_k log p(top_k) and the
    fluency KL, each row weighted by its own scales, in the authors' order of terms (autograd then
    sums the gradients in the same order). A candidate of weight q = 0 (past its row's own top-k)
    adds nothing, even where its probability is 0."""
    clip = -(q * probs.gather(1, top).masked_fill(q == 0, 1.0).log()).sum(-1)  # (R,)
    fluency = ce_scale * ((probs * probs.log()) - (probs * log_p0)).sum(-1)  # (R,)
    return (clip_scale * clip).sum() + fluency.sum()


def update(delta: torch.Tensor, grad: torch.Tensor, neg_stepsize: torch.Tensor, grad_norm_factor: torch.Tensor):
    """δ + step: the gradient divided by its norm (one per layer, keys/values and row) to the
    power of the row's grad_norm_factor, times -stepsize (0 for a row whose iterations are done)."""
    norm = torch.linalg.vector_norm(grad.float(), dim=(3, 4, 5), keepdim=True) + 1e-15  # (L, 2, R, 1, 1, 1)
    power = grad_norm_factor.view(1, 1, -1, 1, 1, 1)
    step = neg_stepsize.view(1, 1, -1, 1, 1, 1).to(grad.dtype) * (grad / (norm ** power).to(grad.dtype))
    return step + delta


def shift_context(
    logits_of: Callable[[torch.Tensor], torch.Tensor],  # past (L, 2, R, H, T, hd) -> logits (R, V)
    past: torch.Tensor,  # (L, 2, R, H, T, hd)
    p0: torch.Tensor,  # (R, V) the plain LM's next-token probs
    distribution: Callable[[torch.Tensor], tuple],  # probs (R, V) -> (top (R, K), q (R, K)), no gradient
    shift: Shift,
) -> torch.Tensor:
    """Return past + δ after `shift.iterations` normalised gradient steps (eagerly)."""
    delta = torch.zeros_like(past)
    log_p0 = p0.log()
    for i in range(shift.most):
        w = shift.weights(i)
        delta.requires_grad_(True)
        with torch.enable_grad():
            with record_function("zerocap.lm_forward"):
                probs = torch.softmax(logits_of(past + delta), dim=-1)  # (R, V)
            top, q = distribution(probs.detach(), shift.live(i))
            total = loss(probs, top, q, log_p0, w.clip_scale, w.ce_scale)
            with record_function("zerocap.lm_backward"):
                (grad,) = torch.autograd.grad(total, delta)
        delta = update(delta.detach(), grad, w.neg_stepsize, w.grad_norm_factor).detach()
    return past + delta


def iteration(step: Callable) -> Callable:
    """One context-shift iteration as a function of tensors of static shapes (see the module
    docstring): (δ, at, log p0, top, q, weights) -> (next δ, the logits (R, V) with it).
    `step(last, past, positions, mask)` is the LM's one-token step."""

    def run(delta: torch.Tensor, at: At, log_p0: torch.Tensor, top: torch.Tensor, q: torch.Tensor, w: Weights):
        def loss_of(d):
            probs = torch.softmax(step(at.last, at.past + d, at.positions, at.mask), dim=-1)
            return loss(probs, top, q, log_p0, w.clip_scale, w.ce_scale)

        grad = torch.func.grad(loss_of)(delta)
        delta = update(delta, grad, w.neg_stepsize, w.grad_norm_factor)
        return delta, step(at.last, at.past + delta, at.positions, at.mask)

    return run
