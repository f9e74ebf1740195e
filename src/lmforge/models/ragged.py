"""A key/value cache whose rows have lengths of their own, for batched decoding.

The serving engine decodes many sequences together, each at its own position: one joined with
a 3-token prompt, another is 200 tokens in. :class:`RaggedKVCache` keeps every layer's keys and
values in [B, n_head, capacity, head_size] buffers with one length per row. A decode step puts
row b's new key and value at position ``lengths[b]``, and its query sees keys
``0..lengths[b]`` only (a key mask), so each row's result is what the row would get alone.

>>> ragged = RaggedKVCache(n_layer=4, block_size=128)
>>> _, cache = model(prompt_a)            # prefill alone, a KVCache of len(prompt_a)
>>> ragged.insert(cache)                  # row 0
>>> ragged.insert(other_cache)            # row 1, another length
>>> logits, ragged = model(next_tokens[:, None], ragged)   # one step for both rows
>>> ragged.keep(torch.tensor([1]))        # row 0 left the batch
"""

from __future__ import annotations

from typing import Any

import torch

from lmforge.errors import LmforgeError

MIN_CAPACITY = 64


class RaggedKVCache:
    """Keys and values of B sequences of different lengths (see the module docstring)."""

    def __init__(self, n_layer: int, block_size: int) -> None:
        self.keys: list[torch.Tensor | None] = [None] * n_layer
        self.values: list[torch.Tensor | None] = [None] * n_layer
        self.lengths = torch.zeros(0, dtype=torch.long)
        self.block_size = block_size
        self.mask: torch.Tensor | None = None  # [B, 1, T, capacity]: keys each query sees
        self._positions: torch.Tensor | None = None

    @property
    def batch_size(self) -> int:
        """B, the number of rows."""
        return int(self.lengths.shape[0])

    @property
    def length(self) -> int:
        """The longest row's length."""
        return int(self.lengths.max()) if self.batch_size else 0

    @property
    def capacity(self) -> int:
        """Positions each row's buffers hold now (they grow by doubling, up to the block
        size)."""
        first = self.keys[0]
        return 0 if first is None else first.shape[2]

    def insert(self, cache: Any) -> None:
        """Append the rows of a filled :class:`~lmforge.models.transformer.KVCache` (all of
        its rows have its length)."""
        filled = cache.length
        rows = cache.batch_size
        if rows == 0:
            raise LmforgeError("cannot insert an empty key/value cache into a batch")
        self._reserve(filled)
        capacity = self.capacity or self._grown_capacity(filled)
        for layer, (k, v) in enumerate(zip(cache.keys, cache.values, strict=True)):
            self.keys[layer] = _cat_padded(self.keys[layer], k, filled, capacity)
            self.values[layer] = _cat_padded(self.values[layer], v, filled, capacity)
        added = torch.full((rows,), filled, dtype=torch.long, device=self.lengths.device)
        self.lengths = torch.cat([self.lengths.to(added.device), added])

    def keep(self, rows: torch.Tensor) -> None:
        """Keep only ``rows`` (indices, in the order given); the others leave the batch."""
        self.lengths = self.lengths.index_select(0, rows.to(self.lengths.device))
        for layer in range(len(self.keys)):
            k, v = self.keys[layer], self.values[layer]
            if k is not None and v is not None:
                self.keys[layer] = k.index_select(0, rows.to(k.device))
                self.values[layer] = v.index_select(0, rows.to(v.device))

    def advance(self, t: int) -> torch.Tensor:
        """Start a model call of ``t`` new tokens per row: their positions [B, t], and the
        key mask for the attention; the lengths move on by ``t``."""
        longest = self.length + t
        if longest > self.block_size:
            raise LmforgeError(
                f"{longest} tokens exceed the model's block size {self.block_size}; "
                "slide the window before decoding on"
            )
        self._reserve(longest)
        device = self.keys[0].device if self.keys[0] is not None else self.lengths.device
        steps = torch.arange(t, device=device)
        positions = self.lengths.to(device)[:, None] + steps[None, :]
        keys = torch.arange(self.capacity, device=device)
        self.mask = (keys[None, None, :] <= positions[:, :, None])[:, None]
        self._positions = positions
        self.lengths = self.lengths + t
        return positions

    def update(
        self, layer: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write the new keys and values [B, H, t, D] of ``layer`` at each row's positions;
        return the whole buffers [B, H, capacity, D] (read them through :attr:`mask`)."""
        keys, values, positions = self.keys[layer], self.values[layer], self._positions
        if keys is None or values is None or positions is None:
            raise LmforgeError("the ragged cache is empty: insert prefilled rows first")
        rows = torch.arange(keys.shape[0], device=keys.device)[:, None]
        keys[rows, :, positions] = k.transpose(1, 2).to(keys.dtype)
        values[rows, :, positions] = v.transpose(1, 2).to(values.dtype)
        return keys, values

    def _grown_capacity(self, needed: int) -> int:
        capacity = max(self.capacity, MIN_CAPACITY)
        while capacity < needed:
            capacity *= 2
        return min(capacity, max(self.block_size, needed))

    def _reserve(self, needed: int) -> None:
        """Grow every buffer to hold ``needed`` positions (new positions are zeros, never
        garbage: a masked key still meets a value in the product)."""
        if self.capacity == 0 or self.capacity >= needed:
            return
        capacity = self._grown_capacity(needed)
        for layer in range(len(self.keys)):
            self.keys[layer] = _padded(self.keys[layer], capacity)
            self.values[layer] = _padded(self.values[layer], capacity)


def _padded(buffer: torch.Tensor | None, capacity: int) -> torch.Tensor | None:
    if buffer is None:
        return None
    b, h, filled, d = buffer.shape
    grown = buffer.new_zeros(b, h, capacity, d)
    grown[:, :, :filled] = buffer
    return grown


def _cat_padded(
    batch: torch.Tensor | None, rows: torch.Tensor | None, filled: int, capacity: int
) -> torch.Tensor:
    if rows is None:
        raise LmforgeError("cannot insert an empty key/value cache into a batch")
    b, h, _, d = rows.shape
    padded = rows.new_zeros(b, h, capacity, d)
    padded[:, :, :filled] = rows[:, :, :filled]
    return padded if batch is None else torch.cat([batch, padded.to(batch.dtype)])
