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
from typing import NamedTuple, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch.profiler import record_function
from transformers import DynamicCache

from .compiled import Compiled
from .context_shift import At, shift_context
from .errors import InputError
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


def _rotated(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary positions on x (R, H, 1, hd): cos, sin (R, 1, 1, hd), halves rotated (Llama's layout)."""
    half = x.shape[-1] // 2
    return x * cos + torch.cat([-x[..., half:], x[..., :half]], dim=-1) * sin


def llama_step(lm, last: torch.Tensor, past: torch.Tensor, positions: torch.Tensor | None = None,
               mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """A Llama-style decoder (Llama, Mistral without a window, Qwen2, Qwen3) on one new token per
    row over `past` (L, 2, R, KV, T, hd) -> (logits (R, V) fp32, the new token's keys/values
    (L, 2, R, KV, 1, hd)): the model's own norms, projections, rotary table and MLPs, without its
    cache and mask machinery; grouped-query heads share their key/value head."""
    body = lm.model
    R, (KV, T, hd) = last.shape[0], past.shape[-3:]
    x = body.embed_tokens(last)  # (R, 1, d)
    where = torch.full((R, 1), T, device=last.device, dtype=torch.long) if positions is None else positions[:, None]
    cos, sin = (t[:, None] for t in body.rotary_emb(x, where))  # (R, 1, 1, hd)
    attend = _attend_mask(mask)
    kv = []
    for i, layer in enumerate(body.layers):
        attn = layer.self_attn
        h = layer.input_layernorm(x)
        q, k, v = (proj(h).view(R, 1, -1, hd) for proj in (attn.q_proj, attn.k_proj, attn.v_proj))
        if hasattr(attn, "q_norm"):  # Qwen3: per-head norms before the rotation
            q, k = attn.q_norm(q), attn.k_norm(k)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (R, heads, 1, hd)
        q, k = _rotated(q, cos, sin), _rotated(k, cos, sin)
        kv.append(torch.stack([k, v]))
        keys = torch.cat([past[i, 0], k], dim=2)  # (R, KV, T + 1, hd)
        values = torch.cat([past[i, 1], v], dim=2)
        a = F.scaled_dot_product_attention(q, keys, values, attn_mask=attend, scale=attn.scaling,
                                           enable_gqa=q.shape[1] != KV)  # query heads share a key/value head
        x = x + attn.o_proj(a.transpose(1, 2).reshape(R, 1, -1))
        x = x + layer.mlp(layer.post_attention_layernorm(x))
    return lm.lm_head(body.norm(x))[:, -1, :].float(), torch.stack(kv)


def gpt2_forward(lm, ids: torch.Tensor, last: torch.Tensor, prefix: torch.Tensor | None = None,
                 bare: torch.Tensor | None = None) -> torch.Tensor:
    """GPT-2 on whole rows `ids` (R, T) after an optional prefix of keys/values (L, 2, R, H, P, hd)
    -> logits (R, V) fp32 at each row's position `last` (R,) only (rows padded on the right: a
    causal LM's real positions never see the padding). Differentiable in the prefix. Rows marked
    `bare` (R,) bool ignore the prefix: they see none of its keys and start at position 0, as
    without one (the plain LM riding in the same pass)."""
    tr = lm.transformer
    R, T = ids.shape
    P = 0 if prefix is None else prefix.shape[-2]
    H = tr.h[0].attn.num_heads
    dev = ids.device
    j = torch.arange(T, device=dev)
    mask = torch.ones(T, P + T, dtype=torch.bool, device=dev).tril(P)  # query i sees keys <= P + i
    if bare is None or P == 0:
        x = tr.wte(ids) + tr.wpe(P + j)  # (R, T, d)
    else:
        x = tr.wte(ids) + tr.wpe(torch.where(bare, 0, P)[:, None] + j)
        mask = mask & ~(bare[:, None, None, None] & (torch.arange(P + T, device=dev) < P))  # (R, 1, T, P + T)
    for i, block in enumerate(tr.h):
        qkv = block.attn.c_attn(block.ln_1(x)).view(R, T, 3, H, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (R, H, T, hd)
        if prefix is not None:
            k, v = torch.cat([prefix[i, 0], k], dim=2), torch.cat([prefix[i, 1], v], dim=2)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        x = x + block.attn.c_proj(a.transpose(1, 2).reshape(R, T, -1))
        mlp = block.mlp
        x = x + mlp.c_proj(F.gelu(mlp.c_fc(block.ln_2(x)), approximate="tanh"))
    x = x[torch.arange(R, device=dev), last]  # (R, d): the LM head at the positions read only
    return lm.lm_head(tr.ln_f(x)).float()


class GenericLM:
    """A frozen Hugging Face causal LM through its own forward."""

    def __init__(self, lm):
        self.lm = lm
        params = inspect.signature(lm.forward).parameters
        # transformers >= 5.2x calls the cache argument `cache`; earlier 5.x `past_key_values`
        self._cache_arg = "cache" if "cache" in params else "past_key_values"
        self.step = None  # a written-out one-token step, or None: the generic forward
        self._layout: tuple[int, int, int] | None = None

    def layout(self) -> tuple[int, int, int]:
        """(layers, key/value heads, head size) of the LM's cache, read off one token's pass: fewer
        key/value heads than query heads under grouped- or multi-query attention (Llama, Qwen,
        Mistral, Gemma, Phi-3), a head size of its own where the config sets one (Gemma, Qwen3)."""
        if self._layout is None:
            kind = getattr(self.lm.config, "model_type", "?")
            no_cache = (f"the LM ({kind!r}) does not keep a key/value cache on every layer (state-space or hybrid"
                        " layers -- Mamba, Jamba, LFM2 -- keep other state); ZeroCap steers every layer's keys and"
                        " values, so it runs LMs whose every layer is attention")
            try:
                with torch.no_grad():
                    out = self.cached(torch.zeros(1, 1, dtype=torch.long, device=next(self.lm.parameters()).device))
                layers = list(self._cache_out(out).layers)
            except (IndexError, AttributeError, KeyError) as e:  # the model's own forward, given a DynamicCache
                raise InputError(f"{no_cache} ({type(e).__name__} in its forward)") from None
            expected = getattr(self.lm.config, "num_hidden_layers", None)
            if any(getattr(layer, "keys", None) is None or getattr(layer, "values", None) is None
                   for layer in layers) or (isinstance(expected, int) and len(layers) != expected):
                raise InputError(no_cache)
            if any(layer.keys.shape[-1] != layer.values.shape[-1] for layer in layers):
                raise InputError(f"the LM ({kind!r}) keeps keys and values of other sizes (multi-head latent"
                                 " attention: DeepSeek-V2/V3); ZeroCap stacks each layer's keys with its values,"
                                 " so it runs LMs whose keys and values share one head size")
            shapes = {(layer.keys.shape[1], layer.keys.shape[-1]) for layer in layers}
            if len(shapes) != 1:
                raise InputError(f"the LM's layers hold caches of other shapes ({sorted(shapes)}); ZeroCap stacks"
                                 " them as one tensor, so it runs LMs whose layers share one")
            (heads, head_dim), = shapes
            self._layout = (len(layers), heads, head_dim)
        return self._layout

    def cached(self, ids: torch.Tensor, cache: DynamicCache | None = None, **kwargs):
        """The LM's output on ids after `cache` (default: none), with a cache of every layer's keys
        and values at every position -- a model with sliding-window layers (Gemma, Mistral) would
        otherwise keep only its window in those, and the layers would not stack; the window still
        applies, in the attention mask."""
        return self.lm(ids, use_cache=True, **{self._cache_arg: DynamicCache() if cache is None else cache}, **kwargs)

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
        kwargs, cache = {}, None
        if past is not None:
            cache = DynamicCache(ddp_cache_data=[(kv[0], kv[1]) for kv in past])
            if mask is not None:  # rows of other lengths: their own positions, padding masked
                kwargs["attention_mask"] = _attend_mask(mask)[:, 0, 0, :].long()
                kwargs["position_ids"] = positions[:, None]
        out = self.cached(last, cache, **kwargs)
        return out.logits[:, -1, :].float(), self._stack(self._cache_out(out).layers, slice(-1, None))

    def next_logits(self, last, past, positions=None, mask=None) -> torch.Tensor:
        """Logits (R, V) fp32 of the token after `last` (R, 1) given the cache `past`."""
        return self.forward_step(last, past, positions, mask)[0]

    def shifted_logits(self, at: At, p0, distribution, shift) -> torch.Tensor:
        """Logits (R, V) of the token after `at.last` once `at.past` is shifted (context_shift.py),
        eagerly."""
        def logits_of(shifted):
            return self.next_logits(at.last, shifted, at.positions, at.mask)

        shifted = shift_context(logits_of, at.past, p0, distribution, shift)
        with torch.no_grad(), record_function("zerocap.lm_shifted_logits"):
            return self.next_logits(at.last, shifted, at.positions, at.mask)

    @torch.no_grad()
    def prefill(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Context (R, T) -> (plain next-token probs (R, V) fp32, past (L, 2, R, H, T-1, hd) or None)."""
        out = self.cached(context)
        p0 = torch.softmax(out.logits[:, -1, :].float(), dim=-1)
        return p0, (self._past(out, context) if context.shape[1] > 1 else None)

    def _past(self, out, context: torch.Tensor) -> torch.Tensor:
        return self._stack(self._cache_out(out).layers, slice(None, -1))


class Rows:
    """The rows of one decoding step, and which request each belongs to.

    slots (R,): the cache slot of each row; contexts: each row's token ids (prompt + generated;
    [0] for a slot no request holds, in the static layout); index: per request, its rows (at its
    first step only the prompt's); active (n,): every request's rows, request by request."""

    def __init__(self, slots: torch.Tensor, contexts: list[list[int]], index: list[list[int]], device):
        self.slots, self.contexts, self.index = slots, contexts, index
        self.last = torch.tensor([c[-1] for c in contexts], device=device)[:, None]  # (R, 1)
        self.active = torch.tensor([i for rows in index for i in rows], dtype=torch.long, device=device)
        # every row is a request's, in order (a static step's rows are slots: any order)
        self.dense = len(self.active) == len(contexts) and bool(
            (self.active == torch.arange(len(contexts), device=device)).all())


class Plain(NamedTuple):
    """A step's plain LM pass over its rows (State.plain)."""

    probs: torch.Tensor  # (R, V) fp32: the plain next-token distribution
    logits: torch.Tensor | None  # (R, V): its logits, where the form keeps them (the fast form's; else None)
    at: At  # what the step read: the rows' last tokens and past (None before any token is cached)
    pending: torch.Tensor | None  # the last tokens' keys/values, appended to the cache at the step's end


@runtime_checkable
class State(Protocol):
    """One batch's LM state, in either form (FastState, ExactState): what batch.py calls."""

    def candidates_width(self, top_k: int, vocab: int) -> int: ...
    def begin(self, prompt: list[int], beams: int, max_tokens: int) -> torch.Tensor: ...
    def end(self, slots: torch.Tensor) -> None: ...
    def pack(self, requests) -> None: ...
    def rows(self, requests, device) -> "Rows": ...
    def plain(self, rows: "Rows") -> Plain: ...
    def shift(self, plain: Plain, distribution, shift) -> torch.Tensor:
        """The next-token logits (R, V) after the context shift."""
    def unshifted(self, plain: Plain) -> torch.Tensor:
        """The next-token logits (R, V) when nothing is shifted."""
    def commit(self, rows: "Rows", pending: torch.Tensor | None, reorders: list) -> None: ...


def step_size(slots: int) -> int:
    """The sizes a compiled step reads, in steps of at most 1.5x: 1, 2, 3, 4, 6, 8, 12, 16, 24, ...
    (few shapes to compile, at most a third of a step spent on empty slots)."""
    power = 1 << (slots - 1).bit_length()  # the next power of two
    return 3 * power // 4 if power >= 4 and slots <= 3 * power // 4 else power


class FastLM(GenericLM):
    """Keeps each row's past in a KV cache; one-token steps (see the module docstring)."""

    def __init__(self, lm, step=None):
        super().__init__(lm)
        self.step = step  # replaceable, e.g. by a compiled step
        self.compiled = None  # compiled.Compiled once compile() is called, while it works

    def compile(self, mode: str = "default") -> None:
        """Decode in the static layout, its step and shift iteration compiled (compiled.py)."""
        if self.step is None:
            raise ValueError("only an LM with a written-out step (GPT-2, Llama-style) can be compiled")
        self.compiled = Compiled(self, mode)

    def new_state(self, max_requests: int | None = None) -> "FastState":
        return FastState(self, max_requests)


class FastState:
    """One batch's LM state in the fast form: a KV cache with a row per beam.

    Eager (the default), a step reads the rows of the requests it advances, as long as the
    longest holds. Compiled, it reads the cache's slots at its full capacity in sizes: the
    requests' slots are packed low (`pack`) and a step reads the smallest size (`step_size`: 1,
    2, 3, 4, 6, 8, 12, ...) of slots that holds them -- so a configuration compiles once per
    size and a lone request steps its own few, not the whole batch's (all of them once a size
    would pass them); the cache holds `max_requests` x beam_size slots, capacity for prompt +
    max_tokens rounded up to 32."""

    def __init__(self, lm: FastLM, max_requests: int | None = None):
        self.lm, self.max_requests = lm, max_requests
        self.cache: KVCache | None = None

    @property
    def static(self) -> bool:
        return self.lm.compiled is not None

    def candidates_width(self, top_k: int, vocab: int) -> int:
        """Candidates taken per row for a step whose largest top_k is `top_k`: that many, or, for a
        compiled step, the next power of two (fewer shapes to compile)."""
        return min(vocab, 1 << (top_k - 1).bit_length()) if self.static else top_k

    def _cache(self, beams: int, positions: int) -> KVCache:
        if self.cache is None:
            layers, heads, head_dim = self.lm.layout()
            param = next(self.lm.lm.parameters())
            slots = beams * (self.max_requests or 1)
            self.cache = KVCache(layers, heads, head_dim, param.dtype, param.device, slots=slots,
                                 capacity=-(-positions // 32) * 32)
        return self.cache

    @torch.no_grad()
    def begin(self, prompt: list[int], beams: int, max_tokens: int) -> torch.Tensor:
        """Slots (beams,) for a new request, the first holding the prompt's past."""
        cache = self._cache(beams, len(prompt) - 1 + max_tokens)
        slots = cache.allocate(beams, len(prompt) - 1 + max_tokens)
        if len(prompt) > 1:
            ids = torch.tensor([prompt[:-1]], device=cache.device)
            cache.write(slots[:1], self.lm._stack(self.lm._cache_out(self.lm.cached(ids)).layers))
        return slots

    def end(self, slots: torch.Tensor) -> None:
        self.cache.release(slots)

    def pack(self, requests) -> None:
        """Static layout: move the requests' slots into the lowest ones, so that a step reads the
        smallest size that holds them (`rows`)."""
        if not self.static or self.cache is None:
            return
        used = sum(len(r.slots) for r in requests)
        free_low = [s for s in self.cache.free if s < used]
        for r in requests:
            high = [i for i, s in enumerate(r.slots.tolist()) if s >= used]
            if not high:
                continue
            target, free_low = free_low[:len(high)], free_low[len(high):]
            self.cache.move([int(r.slots[i]) for i in high], target)
            r.slots = r.slots.clone()
            r.slots[high] = torch.tensor(target, dtype=r.slots.dtype, device=r.slots.device)

    def size(self, requests) -> int:
        """Static layout: the slots a step reads -- the smallest size (`step_size`) that holds the
        requests' slots (a lone request in a container sized for 16 steps its own few)."""
        return min(self.cache.slots, step_size(max(int(r.slots.max()) for r in requests) + 1))

    def rows(self, requests, device) -> Rows:
        """The step's rows: eager, the requests' own, request by request; static, every slot of
        the step's size."""
        contexts = [r.contexts() for r in requests]
        if not self.static:
            slots = torch.cat([r.slots[:len(c)] for r, c in zip(requests, contexts)])
            index, start = [], 0
            for c in contexts:
                index.append(list(range(start, start + len(c))))
                start += len(c)
            return Rows(slots, [row for c in contexts for row in c], index, device)
        rows: list[list[int]] = [[0]] * self.size(requests)
        index = []
        for r, c in zip(requests, contexts):
            mine = r.slots[:len(c)].tolist()
            for slot, row in zip(mine, c):
                rows[slot] = row
            index.append(mine)
        return Rows(torch.arange(len(rows), device=device), rows, index, device)

    @torch.no_grad()
    def plain(self, rows: Rows) -> Plain:
        """The plain pass of the step's rows on their cached past (one token each)."""
        if self.static:
            size = len(rows.contexts)
            at = At(rows.last, self.cache.data[:, :, :size], self.cache.lengths[:size], self.cache.mask()[:size])
            logits, kv = self.lm.compiled.plain(at)
            return Plain(torch.softmax(logits, dim=-1), logits, at, kv)
        past, mask = self.cache.read(rows.slots)
        positions = None if mask is None else self.cache.lengths[rows.slots]
        at = At(rows.last, None, None, None) if past.shape[4] == 0 else At(rows.last, past, positions, mask)
        logits, kv = self.lm.forward_step(*at)
        return Plain(torch.softmax(logits, dim=-1), logits, at, kv)

    def shift(self, plain: Plain, distribution, shift) -> torch.Tensor:
        """The shifted logits (R, V) after the context shift."""
        if self.static:
            return self.lm.compiled.shift(plain.at, plain.probs, distribution, shift)
        return self.lm.shifted_logits(plain.at, plain.probs, distribution, shift)

    def unshifted(self, plain: Plain) -> torch.Tensor:
        """The plain pass's own logits."""
        return plain.logits

    def commit(self, rows: Rows, pending: torch.Tensor, reorders: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """After a step: each request row's last token joins its past, then each request's slots
        follow its beams (slots (B,), source (B,) into them)."""
        if rows.dense:
            self.cache.append(rows.slots, pending)
        else:
            self.cache.append(rows.slots[rows.active], pending[:, :, rows.active])
        for slots, source in reorders:
            self.cache.reorder(slots, source)


class ExactLM(GenericLM):
    """The authors' operation order: the cache from its own pass over context[:-1] (another
    matrix shape, other rounding), the generic forward for every step."""

    def _past(self, out, context):
        return self._stack(self._cache_out(self.cached(context[:, :-1])).layers)

    def new_state(self, max_requests: int | None = None) -> "ExactState":
        return ExactState(self)


class ExactState:
    """One batch's LM state in the exact form: nothing kept, every step from the whole contexts."""

    def __init__(self, lm: ExactLM):
        self.lm = lm

    def candidates_width(self, top_k: int, vocab: int) -> int:
        return top_k

    def pack(self, requests) -> None:
        pass

    def begin(self, prompt: list[int], beams: int, max_tokens: int) -> torch.Tensor:
        return torch.arange(beams)

    def end(self, slots) -> None:
        pass

    def rows(self, requests, device) -> Rows:
        contexts = [row for r in requests for row in r.contexts()]  # one request: equal lengths
        return Rows(torch.arange(len(contexts)), contexts, [list(range(len(contexts)))], device)

    def plain(self, rows: Rows) -> Plain:
        """The authors' order: the whole contexts' pass for the plain distribution and the past
        (no logits kept: `unshifted` runs their own pass for them)."""
        context = torch.tensor(rows.contexts, device=rows.last.device)  # (R, T)
        p0, past = self.lm.prefill(context)
        return Plain(p0, None, At(rows.last, past, None, None), None)

    def shift(self, plain: Plain, distribution, shift) -> torch.Tensor:
        return self.lm.shifted_logits(plain.at, plain.probs, distribution, shift)

    def unshifted(self, plain: Plain) -> torch.Tensor:
        """The authors' own pass for the logits when nothing is shifted."""
        with torch.no_grad():
            return self.lm.next_logits(plain.at.last, plain.at.past)

    def commit(self, rows, pending, reorders) -> None:
        pass
