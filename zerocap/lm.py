"""The language model seen as a key/value cache: one-token steps over a stacked cache.

The stacked cache `past` of a row holds the keys/values of every context token but the last:
(layers, 2 = keys/values, rows, heads, T, head_dim). Rows read together may hold different
lengths (requests that joined at different steps, prompts of different lengths): then `mask`
(rows, T) marks each row's real positions and `positions` (rows,) is where each row's next
token goes; when every row holds T positions both are None and the step is the plain one.

Two adapters, one per form (forms.py picks), each making a per-batch state (`new_state`):
  FastLM   keeps every row's past in a KV cache (kv_cache.py): a step appends the last token's
           keys/values from the plain pass, so each step is one-token passes only; GPT-2 runs its
           written-out step (`gpt2_step`, about half the kernels of the generic forward), any
           other family the generic Hugging Face forward.
  ExactLM  the authors' operation order: every step, the plain distribution from a pass over the
           whole context and the cache from its own pass over context[:-1]; the generic forward.
"""
from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from transformers import DynamicCache

from .kv_cache import KVCache


def _attend_mask(mask: torch.Tensor | None) -> torch.Tensor | None:
    """Row masks (R, T) of the past -> SDPA's mask (R, 1, 1, T + 1): the new token sees itself too."""
    if mask is None:
        return None
    return torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)[:, None, None, :]


def gpt2_step(lm, last: torch.Tensor, past: torch.Tensor, positions: torch.Tensor | None = None,
              mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """GPT-2 on one new token per row over `past` (L, 2, R, H, T, hd) ->
    (logits (R, V) fp32, the new token's keys/values (L, 2, R, H, 1, hd))."""
    tr = lm.transformer
    R, (H, T, hd) = last.shape[0], past.shape[-3:]
    where = tr.wpe.weight[T] if positions is None else tr.wpe(positions)[:, None, :]
    x = tr.wte(last) + where  # (R, 1, d)
    attend = _attend_mask(mask)
    kv = []
    for i, block in enumerate(tr.h):
        qkv = block.attn.c_attn(block.ln_1(x)).view(R, 1, 3, H, hd).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (R, H, 1, hd)
        kv.append(torch.stack([k, v]))
        keys = torch.cat([past[i, 0], k], dim=2)  # (R, H, T + 1, hd)
        values = torch.cat([past[i, 1], v], dim=2)
        a = F.scaled_dot_product_attention(q, keys, values, attn_mask=attend)  # one query: no causal mask
        x = x + block.attn.c_proj(a.transpose(1, 2).reshape(R, 1, H * hd))
        mlp = block.mlp
        x = x + mlp.c_proj(F.gelu(mlp.c_fc(block.ln_2(x)), approximate="tanh"))
    return lm.lm_head(tr.ln_f(x))[:, -1, :].float(), torch.stack(kv)


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

    def forward_step(self, last: torch.Tensor, past: torch.Tensor | None, positions: torch.Tensor | None = None,
                     mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits (R, V) fp32, the new token's keys/values (L, 2, R, H, 1, hd)) of `last` (R, 1)."""
        if self.step is not None and past is not None:
            return self.step(self.lm, last, past, positions, mask)
        kwargs = {}
        if past is not None:
            kwargs[self._cache_arg] = DynamicCache(ddp_cache_data=[(kv[0], kv[1]) for kv in past])
            if mask is not None:  # rows of other lengths: their own positions, padding masked
                kwargs["attention_mask"] = _attend_mask(mask)[:, 0, 0, :].long()
                kwargs["position_ids"] = positions[:, None]
        out = self.lm(last, use_cache=True, **kwargs)
        return out.logits[:, -1, :].float(), self._stack(self._cache_out(out).layers, slice(-1, None))

    def next_logits(self, last, past, positions=None, mask=None) -> torch.Tensor:
        """Logits (R, V) fp32 of the token after `last` (R, 1) given the cache `past`."""
        return self.forward_step(last, past, positions, mask)[0]

    @torch.no_grad()
    def prefill(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Context (R, T) -> (plain next-token probs (R, V) fp32, past (L, 2, R, H, T-1, hd) or None)."""
        out = self.lm(context, use_cache=True)
        p0 = torch.softmax(out.logits[:, -1, :].float(), dim=-1)
        return p0, (self._past(out, context) if context.shape[1] > 1 else None)

    def _past(self, out, context: torch.Tensor) -> torch.Tensor:
        return self._stack(self._cache_out(out).layers, slice(None, -1))


class Rows:
    """The rows of one decoding step: what the LM state needs of them."""

    def __init__(self, slots: torch.Tensor, contexts: list[list[int]], device):
        self.slots = slots  # (R,) cache slots (the fast form)
        self.contexts = contexts  # each row's token ids: prompt + generated
        self.last = torch.tensor([c[-1] for c in contexts], device=device)[:, None]  # (R, 1)


class FastLM(GenericLM):
    """Keeps each row's past in a KV cache; one-token steps (see the module docstring)."""

    def __init__(self, lm, step=None):
        super().__init__(lm)
        self.step = step  # replaceable, e.g. by a compiled step

    def new_state(self) -> "FastState":
        return FastState(self)


class FastState:
    """One batch's LM state in the fast form: a KV cache with a row per beam."""

    def __init__(self, lm: FastLM):
        self.lm = lm
        c = lm.lm.config
        layers = getattr(c, "num_hidden_layers", None) or c.n_layer
        heads = getattr(c, "num_attention_heads", None) or c.n_head
        width = getattr(c, "hidden_size", None) or c.n_embd
        param = next(lm.lm.parameters())
        self.cache = KVCache(layers, heads, width // heads, param.dtype, param.device)

    @torch.no_grad()
    def begin(self, prompt: list[int], beams: int, max_tokens: int) -> torch.Tensor:
        """Slots (beams,) for a new request, the first holding the prompt's past."""
        slots = self.cache.allocate(beams, len(prompt) - 1 + max_tokens)
        if len(prompt) > 1:
            ids = torch.tensor([prompt[:-1]], device=self.cache.device)
            self.cache.write(slots[:1], self.lm._stack(self.lm._cache_out(self.lm.lm(ids, use_cache=True)).layers))
        return slots

    def end(self, slots: torch.Tensor) -> None:
        self.cache.release(slots)

    @torch.no_grad()
    def plain(self, rows: Rows):
        """(plain next-token probs (R, V) fp32, past (L, 2, R, H, T, hd) or None, positions, mask,
        what to append at the end of the step) for the step's rows."""
        past, mask = self.cache.read(rows.slots)
        positions = None if mask is None else self.cache.lengths[rows.slots]
        if past.shape[4] == 0:
            past = mask = positions = None
        logits, kv = self.lm.forward_step(rows.last, past, positions, mask)
        return torch.softmax(logits, dim=-1), past, positions, mask, kv

    def logits(self, last, past, positions, mask) -> torch.Tensor:
        return self.lm.next_logits(last, past, positions, mask)

    def commit(self, rows: Rows, pending: torch.Tensor, reorders: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """After a step: each row's last token joins its past, then each request's slots follow
        its beams (slots (B,), source (B,) into them)."""
        self.cache.append(rows.slots, pending)
        for slots, source in reorders:
            self.cache.reorder(slots, source)


class ExactLM(GenericLM):
    """The authors' operation order: the cache from its own pass over context[:-1] (another
    matrix shape, other rounding), the generic forward for every step."""

    def _past(self, out, context):
        return self._stack(self._cache_out(self.lm(context[:, :-1], use_cache=True)).layers)

    def new_state(self) -> "ExactState":
        return ExactState(self)


class ExactState:
    """One batch's LM state in the exact form: nothing kept, every step from the whole contexts."""

    def __init__(self, lm: ExactLM):
        self.lm = lm

    def begin(self, prompt: list[int], beams: int, max_tokens: int) -> torch.Tensor:
        return torch.arange(beams)

    def end(self, slots) -> None:
        pass

    def plain(self, rows: Rows):
        context = torch.tensor(rows.contexts, device=rows.last.device)  # (R, T): one request, equal lengths
        p0, past = self.lm.prefill(context)
        return p0, past, None, None, None

    def logits(self, last, past, positions, mask) -> torch.Tensor:
        return self.lm.next_logits(last, past)

    def commit(self, rows, pending, reorders) -> None:
        pass
