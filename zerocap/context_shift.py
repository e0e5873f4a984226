"""Context shift: a few gradient steps on the LM's key/value cache towards the CLIP target.

`past` holds the keys/values of every context token but the last, stacked in one tensor
(layers, 2 = keys/values, rows, heads, T-1, head_dim). The shift δ has the same shape and
starts from zero at every decoding step (the seed's --reset_context_delta).
"""
from __future__ import annotations

import inspect
from typing import Callable

import torch
import torch.nn.functional as F
from torch.profiler import record_function
from transformers import DynamicCache


def _plain_gpt2(lm) -> bool:
    """A GPT-2 whose attention and MLP are the standard ones (what `_gpt2_step` computes)."""
    c = lm.config
    return (getattr(c, "model_type", "") == "gpt2" and hasattr(lm, "transformer")
            and getattr(c, "activation_function", "") in ("gelu_new", "gelu_pytorch_tanh")
            and getattr(c, "scale_attn_weights", True) and not getattr(c, "scale_attn_by_inverse_layer_idx", False)
            and not getattr(c, "reorder_and_upcast_attn", False) and not getattr(c, "add_cross_attention", False))


class CachedLM:
    """A Hugging Face causal LM seen as prefill + one-token steps over a stacked KV cache."""

    def __init__(self, lm):
        self.lm = lm
        params = inspect.signature(lm.forward).parameters
        # transformers >= 5.2x calls the cache argument `cache`; earlier 5.x `past_key_values`
        self._cache_arg = "cache" if "cache" in params else "past_key_values"
        self.has_fused_step = _plain_gpt2(lm)

    def _cache_out(self, out):
        return out.cache if hasattr(out, "cache") and out.cache is not None else out.past_key_values

    @torch.no_grad()
    def prefill(self, context: torch.Tensor, exact: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Context (R, T) -> (p0 (R, V) fp32, past (L, 2, R, H, T-1, hd) or None).

        One pass gives both; `exact` takes the cache from a second pass over context[:, :-1]
        as the authors do (a different matrix shape, so the cache can differ in the last bit).
        """
        out = self.lm(context, use_cache=True)
        p0 = torch.softmax(out.logits[:, -1, :].float(), dim=-1)
        if context.shape[1] == 1:
            return p0, None
        if exact:
            layers = self._cache_out(self.lm(context[:, :-1], use_cache=True)).layers
            past = torch.stack([torch.stack([layer.keys, layer.values]) for layer in layers])
        else:
            layers = self._cache_out(out).layers
            past = torch.stack([torch.stack([layer.keys[..., :-1, :], layer.values[..., :-1, :]]) for layer in layers])
        return p0, past

    def next_logits(self, last: torch.Tensor, past: torch.Tensor | None, fast: bool = False) -> torch.Tensor:
        """Logits (R, V) fp32 of the token after `last` (R, 1) given the cache `past`.

        fast: for GPT-2, one token through `_gpt2_step` (about half the kernels of the generic
        forward, with no masks or cache objects); equal up to rounding, so not in the exact form.
        """
        if fast and past is not None and self.has_fused_step:
            return self._gpt2_step(last, past)
        kwargs = {}
        if past is not None:
            kwargs[self._cache_arg] = DynamicCache(ddp_cache_data=[(kv[0], kv[1]) for kv in past])
        out = self.lm(last, use_cache=True, **kwargs)
        return out.logits[:, -1, :].float()

    def _gpt2_step(self, last: torch.Tensor, past: torch.Tensor) -> torch.Tensor:
        """GPT-2 on one new token per row, attending to `past` (L, 2, R, H, P, hd) -> logits (R, V)."""
        tr = self.lm.transformer
        R, (H, P, hd) = last.shape[0], past.shape[-3:]
        x = tr.wte(last) + tr.wpe.weight[P]  # (R, 1, d): every row continues at position P
        for i, block in enumerate(tr.h):
            qkv = block.attn.c_attn(block.ln_1(x)).view(R, 1, 3, H, hd).permute(2, 0, 3, 1, 4)
            q, k, v = qkv.unbind(0)  # (R, H, 1, hd)
            k = torch.cat([past[i, 0], k], dim=2)  # (R, H, P + 1, hd)
            v = torch.cat([past[i, 1], v], dim=2)
            a = F.scaled_dot_product_attention(q, k, v)  # one query sees every position: no mask
            x = x + block.attn.c_proj(a.transpose(1, 2).reshape(R, 1, H * hd))
            mlp = block.mlp
            x = x + mlp.c_proj(F.gelu(mlp.c_fc(block.ln_2(x)), approximate="tanh"))
        return self.lm.lm_head(tr.ln_f(x))[:, -1, :].float()


def shift_context(
    lm: CachedLM,
    past: torch.Tensor,  # (L, 2, R, H, T-1, hd)
    last: torch.Tensor,  # (R, 1)
    p0: torch.Tensor,  # (R, V)
    clip_loss: Callable[[torch.Tensor], torch.Tensor],  # probs (R, V) -> per-row loss (R,)
    cfg,
    fast: bool = False,  # CachedLM.next_logits(fast=...)
) -> torch.Tensor:
    """Return past + δ after cfg.num_iterations normalised gradient steps."""
    delta = torch.zeros_like(past)
    log_p0 = p0.log()
    for _ in range(cfg.num_iterations):
        delta.requires_grad_(True)
        with record_function("zerocap.lm_forward"):
            probs = torch.softmax(lm.next_logits(last, past + delta, fast=fast), dim=-1)  # (R, V)
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
