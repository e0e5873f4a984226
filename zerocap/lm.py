"""The language model seen as a key/value cache: prefill, then one-token steps over a stacked cache.

Two adapters, one per form (forms.py picks): `FastLM` takes the distribution and the cache from one
pass and runs its family's written-out one-token step when there is one (families.py: GPT-2's
`gpt2_step`, about half the kernels of the generic forward); `ExactLM` follows the authors'
operation order -- the cache from its own pass over context[:-1], the generic Hugging Face forward
for every step -- so fp32 results are theirs to the last bit where the same kernels run. Any
Hugging Face causal LM with a KV cache runs through the generic forward.

The stacked cache `past` holds the keys/values of every context token but the last:
(layers, 2 = keys/values, rows, heads, T-1, head_dim).
"""
from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from transformers import DynamicCache


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


class GenericLM:
    """A frozen Hugging Face causal LM through its own forward."""

    def __init__(self, lm):
        self.lm = lm
        params = inspect.signature(lm.forward).parameters
        # transformers >= 5.2x calls the cache argument `cache`; earlier 5.x `past_key_values`
        self._cache_arg = "cache" if "cache" in params else "past_key_values"
        self.step = None  # a written-out one-token step, or None: the generic forward

    def _cache_out(self, out):
        return out.cache if getattr(out, "cache", None) is not None else out.past_key_values

    @staticmethod
    def _stack(layers, keep: slice = slice(None)) -> torch.Tensor:
        return torch.stack([torch.stack([layer.keys[..., keep, :], layer.values[..., keep, :]]) for layer in layers])

    def next_logits(self, last: torch.Tensor, past: torch.Tensor | None) -> torch.Tensor:
        """Logits (R, V) fp32 of the token after `last` (R, 1) given the cache `past`."""
        if self.step is not None and past is not None:
            return self.step(self.lm, last, past)
        kwargs = {}
        if past is not None:
            kwargs[self._cache_arg] = DynamicCache(ddp_cache_data=[(kv[0], kv[1]) for kv in past])
        return self.lm(last, use_cache=True, **kwargs).logits[:, -1, :].float()


    @torch.no_grad()
    def prefill(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Context (R, T) -> (plain next-token probs (R, V) fp32, past (L, 2, R, H, T-1, hd) or None)."""
        out = self.lm(context, use_cache=True)
        p0 = torch.softmax(out.logits[:, -1, :].float(), dim=-1)
        return p0, (self._past(out, context) if context.shape[1] > 1 else None)

    def _past(self, out, context: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class FastLM(GenericLM):
    """One pass gives both the distribution and the cache; one-token steps run `step` (the
    family's written-out step for this model) when there is one. Equal to ExactLM up to rounding."""

    def __init__(self, lm, step=None):
        super().__init__(lm)
        self.step = step  # replaceable, e.g. by torch.compile(gpt2_step) in the benchmark's experiments

    def _past(self, out, context):
        return self._stack(self._cache_out(out).layers, slice(None, -1))


class ExactLM(GenericLM):
    """The authors' operation order: the cache from its own pass over context[:-1] (another
    matrix shape, other rounding), the generic forward for every step."""

    def _past(self, out, context):
        return self._stack(self._cache_out(self.lm(context[:, :-1], use_cache=True)).layers)
