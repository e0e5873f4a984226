"""The language model seen as a key/value cache: prefill, then one-token steps over a stacked cache.

This is where an LM family plugs in. Any Hugging Face causal LM with a KV cache works through
the generic forward; GPT-2 also has a written-out one-token step (`gpt2_step`) on the stacked
cache, with no masks or cache objects (about half the kernels of the generic forward).

The stacked cache `past` holds the keys/values of every context token but the last:
(layers, 2 = keys/values, rows, heads, T-1, head_dim).
"""
from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from transformers import DynamicCache


def _plain_gpt2(lm) -> bool:
    """A GPT-2 whose attention and MLP are the standard ones (what `gpt2_step` computes)."""
    c = lm.config
    return (getattr(c, "model_type", "") == "gpt2" and hasattr(lm, "transformer")
            and getattr(c, "activation_function", "") in ("gelu_new", "gelu_pytorch_tanh")
            and getattr(c, "scale_attn_weights", True) and not getattr(c, "scale_attn_by_inverse_layer_idx", False)
            and not getattr(c, "reorder_and_upcast_attn", False) and not getattr(c, "add_cross_attention", False))


def gpt2_step(lm, last: torch.Tensor, past: torch.Tensor) -> torch.Tensor:
    """GPT-2 on one new token per row, attending to `past` (L, 2, R, H, P, hd) -> logits (R, V) fp32."""
    tr = lm.transformer
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
    return lm.lm_head(tr.ln_f(x))[:, -1, :].float()


class CachedLM:
    """A frozen Hugging Face causal LM as prefill + one-token steps.

    exact: the authors' operation order -- the cache from its own pass over context[:-1] and
    the generic forward for every step -- so fp32 results are theirs to the last bit where the
    same kernels run, to rounding otherwise. Otherwise one pass gives both the distribution and
    the cache, and GPT-2 steps run `gpt2_step` (equal up to rounding).
    """

    def __init__(self, lm, exact: bool = False):
        self.lm = lm
        self.exact = exact
        params = inspect.signature(lm.forward).parameters
        # transformers >= 5.2x calls the cache argument `cache`; earlier 5.x `past_key_values`
        self._cache_arg = "cache" if "cache" in params else "past_key_values"
        # the one-token step of the fast form (None: the generic forward); replaceable, e.g. by
        # torch.compile(gpt2_step) in the benchmark's experiments
        self.step = gpt2_step if not exact and _plain_gpt2(lm) else None

    def _cache_out(self, out):
        return out.cache if getattr(out, "cache", None) is not None else out.past_key_values

    @torch.no_grad()
    def prefill(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Context (R, T) -> (plain next-token probs (R, V) fp32, past (L, 2, R, H, T-1, hd) or None)."""
        out = self.lm(context, use_cache=True)
        p0 = torch.softmax(out.logits[:, -1, :].float(), dim=-1)
        if context.shape[1] == 1:
            return p0, None
        if self.exact:  # a second pass, as the authors do (another matrix shape, other rounding)
            layers = self._cache_out(self.lm(context[:, :-1], use_cache=True)).layers
            return p0, torch.stack([torch.stack([layer.keys, layer.values]) for layer in layers])
        layers = self._cache_out(out).layers
        return p0, torch.stack([torch.stack([layer.keys[..., :-1, :], layer.values[..., :-1, :]]) for layer in layers])

    def next_logits(self, last: torch.Tensor, past: torch.Tensor | None) -> torch.Tensor:
        """Logits (R, V) fp32 of the token after `last` (R, 1) given the cache `past`."""
        if self.step is not None and past is not None:
            return self.step(self.lm, last, past)
        kwargs = {}
        if past is not None:
            kwargs[self._cache_arg] = DynamicCache(ddp_cache_data=[(kv[0], kv[1]) for kv in past])
        return self.lm(last, use_cache=True, **kwargs).logits[:, -1, :].float()
