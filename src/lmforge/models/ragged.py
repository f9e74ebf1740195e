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
    """Keys and values of B sequences of different lengths (see the module docstring).

    The buffers have room for more rows than are in use (rows are added by doubling), so a
    joining row is written in place; a row that leaves is replaced by a moved one (see
    :meth:`keep`), so the others stay where they are.
    """

    def __init__(self, n_layer: int, block_size: int) -> None:
        self.keys: list[torch.Tensor | None] = [None] * n_layer
        self.values: list[torch.Tensor | None] = [None] * n_layer
        self.lengths = torch.zeros(0, dtype=torch.long)
        self.block_size = block_size
        self.mask: torch.Tensor | None = None  # [B, 1, T, capacity]: keys each query sees
        self._bias: torch.Tensor | None = None  # the mask as 0 / -inf, added to the scores
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

    def insert(self, cache: Any, lengths: torch.Tensor | None = None) -> None:
        """Append the rows of a filled :class:`~lmforge.models.transformer.KVCache`, each of
        the cache's length or of its own in ``lengths`` [rows] (right-padded rows: what lies
        past a row's length is never attended to, and is overwritten as the row goes on)."""
        filled, added = cache.length, cache.batch_size
        if added == 0 or any(k is None for k in cache.keys):
            raise LmforgeError("cannot insert an empty key/value cache into a batch")
        b = self.batch_size
        for layer, (k, v) in enumerate(zip(cache.keys, cache.values, strict=True)):
            self.keys[layer] = _room(self.keys[layer], k, b + added, filled, self.block_size)
            self.values[layer] = _room(self.values[layer], v, b + added, filled, self.block_size)
            self.keys[layer][b : b + added, :, :filled] = k[:, :, :filled]
            self.values[layer][b : b + added, :, :filled] = v[:, :, :filled]
        if lengths is None:
            lengths = torch.full((added,), filled, dtype=torch.long)
        self.lengths = torch.cat([self.lengths, lengths.to(self.lengths.device, torch.long)])

    def keep(self, rows: list[int]) -> None:
        """Keep only ``rows`` (indices, in the order given): row j becomes old row
        ``rows[j]``. Only the rows that change place are copied, so an order that moves the
        last rows into the holes (rather than shifting everything) is cheap."""
        moved = [j for j, r in enumerate(rows) if r != j]
        index = torch.tensor(rows, dtype=torch.long)
        self.lengths = self.lengths[index] if rows else self.lengths[:0]
        if not moved:
            return
        targets = torch.tensor(moved, dtype=torch.long)
        sources = index[targets]
        for buffers in (self.keys, self.values):
            for buffer in buffers:
                if buffer is not None:
                    device = buffer.device
                    buffer[targets.to(device)] = buffer[sources.to(device)]

    def row(self, r: int) -> Any:
        """Row ``r`` alone as a plain :class:`~lmforge.models.transformer.KVCache` whose
        buffers are views of this cache's (no copy): decode it on alone and drop this cache."""
        from lmforge.models.transformer import KVCache

        alone = KVCache(len(self.keys), self.block_size)
        alone.keys = [None if k is None else k[r : r + 1] for k in self.keys]
        alone.values = [None if v is None else v[r : r + 1] for v in self.values]
        alone.length = int(self.lengths[r])
        return alone

    def advance(self, t: int) -> torch.Tensor:
        """Start a model call of ``t`` new tokens per row: their positions [B, t], and the
        key mask for the attention; the lengths move on by ``t``."""
        longest = self.length + t
        if longest > self.block_size:
            raise LmforgeError(
                f"{longest} tokens exceed the model's block size {self.block_size}; "
                "slide the window before decoding on"
            )
        b = self.batch_size
        for buffers in (self.keys, self.values):
            for layer, buffer in enumerate(buffers):
                if buffer is not None:
                    buffers[layer] = _room(buffer, buffer, b, longest, self.block_size)
        device = self.keys[0].device if self.keys[0] is not None else self.lengths.device
        positions = self.lengths.to(device)[:, None] + torch.arange(t, device=device)[None, :]
        keys = torch.arange(self.capacity, device=device)
        self.mask = (keys[None, None, :] <= positions[:, :, None])[:, None]
        self._bias = None
        self._positions = positions
        self.lengths = self.lengths + t
        return positions

    def update(
        self, layer: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write the new keys and values [B, H, t, D] of ``layer`` at each row's positions;
        return the rows' buffers [B, H, capacity, D] (read them through :attr:`mask`)."""
        keys, values, positions = self.keys[layer], self.values[layer], self._positions
        if keys is None or values is None or positions is None:
            raise LmforgeError("the ragged cache is empty: insert prefilled rows first")
        b = positions.shape[0]
        rows = torch.arange(b, device=keys.device)[:, None]
        keys[rows, :, positions] = k.transpose(1, 2).to(keys.dtype)
        values[rows, :, positions] = v.transpose(1, 2).to(values.dtype)
        return keys[:b], values[:b]

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """softmax(q·kᵀ/√D + mask)·v for queries [B, H, T, D] over the buffers :meth:`update`
        returned: each row attends to its own positions only. Written out, it is about twice
        as fast on a CPU as ``scaled_dot_product_attention`` with a mask, for one query."""
        if self._bias is None or self._bias.dtype != q.dtype:
            assert self.mask is not None
            zeros = torch.zeros(self.mask.shape, dtype=q.dtype, device=q.device)
            self._bias = zeros.masked_fill(~self.mask, float("-inf"))
        scores = (q @ k.transpose(-1, -2)) * (q.shape[-1] ** -0.5) + self._bias
        return scores.softmax(dim=-1) @ v


def _room(
    buffer: torch.Tensor | None, like: torch.Tensor, rows: int, positions: int, block_size: int
) -> torch.Tensor:
    """``buffer`` [R, H, C, D] if it has room for ``rows`` rows of ``positions`` positions,
    else a copy grown by doubling (positions up to the block size); new room is zeros, never
    garbage, since a masked key still meets its value in the product."""
    have_rows, have_positions = (0, 0) if buffer is None else (buffer.shape[0], buffer.shape[2])
    if buffer is not None and have_rows >= rows and have_positions >= positions:
        return buffer
    new_rows = max(have_rows, 1)
    while new_rows < rows:
        new_rows *= 2
    new_positions = max(have_positions, MIN_CAPACITY)
    while new_positions < positions:
        new_positions *= 2
    new_positions = min(new_positions, max(block_size, positions))
    grown = like.new_zeros(new_rows, like.shape[1], new_positions, like.shape[3])
    if buffer is not None:
        grown[:have_rows, :, :have_positions] = buffer
    return grown
