"""The LM's key/value cache as a pool of rows with per-row lengths, preallocated.

    data     (layers, 2 = keys/values, slots, heads, capacity, head_dim)
    lengths  (slots,) how many past positions each slot holds

A request owns `beam_size` slots from its first step to its last; each holds one beam's past:
the keys/values of every context token but the last (the authors' `context`). Requests joining
at different steps and prompts of different lengths live side by side: a row's positions past
its length are padding, masked out where rows of different lengths are read together. A
step appends the keys/values of each row's last token, then reorders a request's slots to follow
its beams. Nothing is reallocated per step: the pool grows (by doubling) only when more slots or
positions are asked for than it has, so a fixed workload -- a compiled step (issue 17) -- sees
the same shapes at every step.
"""
from __future__ import annotations

import torch


class KVCache:
    def __init__(self, layers: int, heads: int, head_dim: int, dtype: torch.dtype, device,
                 slots: int = 8, capacity: int = 32):
        self.layers, self.heads, self.head_dim = layers, heads, head_dim
        self.dtype, self.device = dtype, torch.device(device)
        self.data = torch.zeros(layers, 2, slots, heads, capacity, head_dim, dtype=dtype, device=self.device)
        self.lengths = torch.zeros(slots, dtype=torch.long, device=self.device)
        self.free = list(range(slots))

    @property
    def slots(self) -> int:
        return self.data.shape[2]

    @property
    def capacity(self) -> int:
        return self.data.shape[4]

    # ---- slots ------------------------------------------------------------------------------------
    def allocate(self, n: int, positions: int) -> torch.Tensor:
        """n free slots (n,), each with room for `positions` past tokens."""
        if n > len(self.free):
            self._grow(slots=max(2 * self.slots, self.slots + n - len(self.free)))
        if positions > self.capacity:
            self._grow(capacity=max(2 * self.capacity, positions))
        taken, self.free = self.free[:n], self.free[n:]
        slots = torch.tensor(taken, dtype=torch.long, device=self.device)
        self.lengths[slots] = 0
        return slots

    def move(self, source: list[int], target: list[int]) -> None:
        """Move the rows of slots `source` to the free slots `target` (the sources become free)."""
        src = torch.tensor(source, dtype=torch.long, device=self.device)
        dst = torch.tensor(target, dtype=torch.long, device=self.device)
        self.data[:, :, dst] = self.data[:, :, src]
        self.lengths[dst] = self.lengths[src]
        self.lengths[src] = 0
        self.free = sorted((set(self.free) - set(target)) | set(source))

    def release(self, slots: torch.Tensor) -> None:
        self.lengths[slots] = 0
        self.free = sorted(set(self.free) | set(slots.tolist()))

    def _grow(self, slots: int | None = None, capacity: int | None = None) -> None:
        slots, capacity = slots or self.slots, capacity or self.capacity
        data = torch.zeros(self.layers, 2, slots, self.heads, capacity, self.head_dim, dtype=self.dtype,
                           device=self.device)
        data[:, :, :self.slots, :, :self.capacity] = self.data
        lengths = torch.zeros(slots, dtype=torch.long, device=self.device)
        lengths[:self.slots] = self.lengths
        self.free += list(range(self.slots, slots))
        self.data, self.lengths = data, lengths

    # ---- reading and writing ------------------------------------------------------------------------
    def write(self, slots: torch.Tensor, past: torch.Tensor) -> None:
        """Set the past of `slots` (n,) to `past` (L, 2, n, H, T, hd)."""
        T = past.shape[4]
        self.data[:, :, slots, :, :T] = past.to(self.dtype)
        self.lengths[slots] = T

    def read(self, slots: torch.Tensor, width: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(past (L, 2, n, H, width, hd), mask (n, width) of real positions, or None when every row
        holds exactly `width`). width: default the longest row's length."""
        lengths = self.lengths[slots]
        width = int(lengths.max()) if width is None else width
        past = self.data[:, :, slots, :, :width]
        if bool((lengths == width).all()):
            return past, None
        return past, torch.arange(width, device=self.device) < lengths[:, None]

    def mask(self) -> torch.Tensor:
        """(slots, capacity) bool: each slot's real positions."""
        return torch.arange(self.capacity, device=self.device) < self.lengths[:, None]

    def append(self, slots: torch.Tensor, kv: torch.Tensor) -> None:
        """Add one position to each of `slots` (n,): kv (L, 2, n, H, 1, hd) at each row's length."""
        lengths = self.lengths[slots]
        if int(lengths.max()) >= self.capacity:
            self._grow(capacity=2 * self.capacity)
        # (slots, lengths) pairs index dims 2 and 4; the pairs' dim comes first: (n, L, 2, H, hd)
        self.data[:, :, slots, :, lengths] = kv[:, :, :, :, 0].permute(2, 0, 1, 3, 4).to(self.dtype)
        self.lengths[slots] = lengths + 1

    def reorder(self, slots: torch.Tensor, source: torch.Tensor) -> None:
        """Slot i of `slots` (n,) takes the contents of slot source[i] (of `slots`' own, (n,) indices)."""
        if bool((source == torch.arange(len(slots), device=source.device)).all()):
            return
        self.data[:, :, slots] = self.data[:, :, slots[source]]
        self.lengths[slots] = self.lengths[slots[source]]
