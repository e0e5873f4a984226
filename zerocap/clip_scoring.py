"""CLIP's text tower, run whole (`encode_full`) or in pieces that reuse a prefix's keys/values.

CLIP's text transformer is causal and reads its features at the EOT position, so a candidate
row `shared prefix tokens + suffix + EOT` needs only the suffix positions computed, attending
to the prefix's cached keys/values (`encode_prefix` once per step, `encode_candidates` per
iteration). guide.py decides which is used.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


class PrefixCache:
    """Per-layer keys/values of the beams' prefix rows.  keys[l]: (R, h, P, hd)"""

    def __init__(self, keys: list[torch.Tensor], values: list[torch.Tensor]):
        self.keys = keys
        self.values = values


class ClipTextScorer:
    """Runs the text tower of an OpenAI `clip.model.CLIP` in pieces, or whole (`encode_full`)."""

    def __init__(self, clip_model):
        self.clip = clip_model
        # up to this many padded suffix tokens run as one pass: on a GPU a pass is launch-bound,
        # so fewer passes pay; a CPU is compute-bound, so it always pads least (length buckets)
        on_gpu = next(clip_model.parameters()).device.type == "cuda"
        self.single_pass_tokens = 16384 if on_gpu else 0
        self.blocks = list(clip_model.transformer.resblocks)
        self.heads = self.blocks[0].attn.num_heads
        self.dtype = clip_model.dtype

    def _embed(self, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        x = self.clip.token_embedding(ids).type(self.dtype)
        return x + self.clip.positional_embedding[positions].type(self.dtype)

    def _qkv(self, block, x):
        """x (..., L, d) -> q, k, v (..., h, L, hd)"""
        qkv = F.linear(block.ln_1(x), block.attn.in_proj_weight, block.attn.in_proj_bias)
        q, k, v = qkv.chunk(3, dim=-1)
        shape = x.shape[:-1] + (self.heads, -1)
        return [t.reshape(shape).transpose(-2, -3) for t in (q, k, v)]

    def _finish(self, block, x, attn):
        """Residual adds of one block; attn (..., h, L, hd)."""
        attn = attn.transpose(-2, -3).flatten(-2)  # (..., L, d)
        x = x + F.linear(attn, block.attn.out_proj.weight, block.attn.out_proj.bias)
        return x + block.mlp(block.ln_2(x))

    @torch.no_grad()
    def encode_prefix(self, prefix_rows: torch.Tensor) -> PrefixCache:
        """Keys/values of the prefix rows (R, P): SOT + prefix ids, zero-padded."""
        P, device = prefix_rows.shape[1], prefix_rows.device
        x = self._embed(prefix_rows, torch.arange(P, device=device))  # (R, P, d)
        causal = torch.ones(P, P, dtype=torch.bool, device=device).tril()
        keys, values = [], []
        for block in self.blocks:
            q, k, v = self._qkv(block, x)  # (R, h, P, hd)
            keys.append(k)
            values.append(v)
            attn = F.scaled_dot_product_attention(q, k, v, attn_mask=causal)
            x = self._finish(block, x, attn)
        return PrefixCache(keys, values)

    @torch.no_grad()
    def encode_full(self, prefix_rows: torch.Tensor, shared: torch.Tensor, suffix: torch.Tensor,
                    eot_index: torch.Tensor) -> torch.Tensor:
        """The same features through CLIP's own `encode_text` on full 77-token rows -> (R, K, D).

        Bit-for-bit what `clip.tokenize` + `encode_text` give (the fp32 path): only the text
        processing is skipped. prefix_rows (R, P): SOT + prefix ids, zero-padded.
        """
        R, K, S = suffix.shape
        dev = suffix.device
        full = torch.zeros(R, K, 78, dtype=torch.long, device=dev)  # column 77 collects padding
        P = prefix_rows.shape[1]
        full[..., :P] = prefix_rows[:, None, :] * (torch.arange(P, device=dev) < shared[..., None])
        j = torch.arange(S, device=dev)
        pos = torch.where(j <= eot_index[..., None], shared[..., None] + j, 77)
        full.scatter_(-1, pos, suffix)
        feats = torch.cat([self.clip.encode_text(rows) for rows in full[..., :77]])  # one beam at a time
        feats = feats / feats.norm(dim=-1, keepdim=True)
        return feats.view(R, K, -1)

    @torch.no_grad()
    def encode_candidates(
        self, cache: PrefixCache, shared: torch.Tensor, suffix: torch.Tensor, eot_index: torch.Tensor,
        needed: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """L2-normalised features of candidate rows  -> (R, K, D)

        shared (R, K): prefix tokens each row reuses; suffix (R, K, S): its own tokens;
        eot_index (R, K): where EOT sits in the suffix; needed (R, K): the rows to compute
        (default all; the others come back as zeros). Up to `single_pass_tokens` padded tokens
        run as one pass (fewer kernel launches); more run in buckets of similar suffix length
        (1, 2, 4, 8, ... tokens), so that one long candidate does not pad them all.
        """
        R, K, S = suffix.shape
        dev = suffix.device
        beam = torch.arange(R, device=dev).repeat_interleave(K)  # (M,)
        shared, suffix, eot_index = shared.reshape(-1), suffix.reshape(R * K, S), eot_index.reshape(-1)
        out = torch.zeros(R * K, self.clip.text_projection.shape[1], dtype=self.dtype, device=dev)
        rows = torch.arange(R * K, device=dev) if needed is None else needed.reshape(-1).nonzero()[:, 0]
        if rows.numel() == 0:
            return out.view(R, K, -1)
        width = int(eot_index[rows].max()) + 1  # the longest needed suffix
        if rows.numel() * width <= self.single_pass_tokens:
            groups = [(rows, width)]
        else:
            bucket = torch.ceil(torch.log2((eot_index[rows] + 1).float())).long()  # suffix fits 2**bucket
            groups = [(rows[bucket == b], min(width, 2**b)) for b in torch.unique(bucket).tolist()]
        for idx, w in groups:
            f = self._encode_rows(cache, beam[idx], shared[idx], suffix[idx, :w], eot_index[idx])
            out[idx] = f / f.norm(dim=-1, keepdim=True)
        return out.view(R, K, -1)

    def _encode_rows(self, cache: PrefixCache, beam, shared, suffix, eot_index) -> torch.Tensor:
        """Features (M, D) of M rows; beam (M,) picks each row's prefix, suffix (M, S)."""
        M, S = suffix.shape
        P = cache.keys[0].shape[-2]
        dev = suffix.device
        j = torch.arange(S, device=dev)
        # padding after EOT may run past CLIP's last position; it never reaches the EOT feature
        positions = (shared[:, None] + j).clamp(max=self.clip.positional_embedding.shape[0] - 1)
        x = self._embed(suffix, positions)  # (M, S, d)
        # suffix position i sees prefix positions < shared and suffix positions <= i
        see_prefix = (torch.arange(P, device=dev) < shared[:, None])[:, None, None, :].expand(M, 1, S, P)
        see_suffix = torch.ones(S, S, dtype=torch.bool, device=dev).tril().expand(M, 1, S, S)
        mask = torch.cat([see_prefix, see_suffix], dim=-1)  # (M, 1, S, P + S)
        for block, pk, pv in zip(self.blocks, cache.keys, cache.values):
            q, k, v = self._qkv(block, x)  # (M, h, S, hd)
            keys = torch.cat([pk[beam], k], dim=-2)  # (M, h, P + S, hd)
            values = torch.cat([pv[beam], v], dim=-2)
            x = self._finish(block, x, F.scaled_dot_product_attention(q, keys, values, attn_mask=mask))
        x = x[torch.arange(M, device=dev), eot_index]  # (M, d)
        return self.clip.ln_final(x).type(self.dtype) @ self.clip.text_projection  # (M, D)

