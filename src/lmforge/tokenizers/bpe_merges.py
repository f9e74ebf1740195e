"""Applying BPE merges to bytes, for the encoder: the rank-ordered merge of short pieces, a
heap-based merge of long ones, the piece cache, and each token's bytes.

A pair ``(a, b)`` of token ids is the int key ``a << 24 | b`` (ids below 2**24); ``merge_ids``
maps a pair's key to the id of the token it merges into (``256 + k`` for merge ``k``), so a
smaller id means a merge learned earlier.

>>> merge_ids = {97 << 24 | 97: 256, 256 << 24 | 97: 257}
>>> apply_merges(b"aaaaa", merge_ids)
[256, 257]
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from itertools import pairwise

from lmforge.errors import TokenizerError

PAIR_SHIFT = 24
PAIR_MASK = (1 << PAIR_SHIFT) - 1
MAX_VOCAB = 1 << PAIR_SHIFT
_SHIFT = PAIR_SHIFT
_NO_MERGE = 1 << 62  # larger than every token id
_LONG_PIECE = 256  # pieces of at least this many bytes are merged with a heap
_CACHE_LIMIT = 1 << 18  # pieces remembered by the encoder


def apply_merges(data: bytes, merge_ids: dict[int, int]) -> list[int]:
    """Bytes → ids: repeatedly merge the adjacent pair learned earliest (every occurrence,
    left to right), as training did; long pieces go to :func:`merge_long`."""
    ids = list(data)
    if len(ids) >= _LONG_PIECE:
        return merge_long(ids, merge_ids)
    get = merge_ids.get
    while len(ids) > 1:
        ranks = [get(a << _SHIFT | b, _NO_MERGE) for a, b in pairwise(ids)]
        z = min(ranks)
        if z == _NO_MERGE:
            break
        merged: list[int] = []
        i, n = 0, len(ids)
        while i < n:
            if i < n - 1 and ranks[i] == z:
                merged.append(z)
                i += 2
            else:
                merged.append(ids[i])
                i += 1
        ids = merged
    return ids


def merge_long(ids: list[int], merge_ids: dict[int, int]) -> list[int]:
    """The same merges as :func:`apply_merges` in O(n log n) for long pieces: a heap of
    (new id, position) over a linked list; the earliest-learned pair merges first, leftmost
    occurrence first.

    >>> merge_long([97, 97, 97], {97 << 24 | 97: 256})
    [256, 97]
    """
    n = len(ids)
    if n < 2:
        return ids
    nxt = list(range(1, n + 1))
    nxt[-1] = -1
    prv = list(range(-1, n - 1))
    get = merge_ids.get
    heap = []
    for i in range(n - 1):
        z = get(ids[i] << _SHIFT | ids[i + 1])
        if z is not None:
            heap.append((z, i))
    heapq.heapify(heap)
    while heap:
        z, i = heapq.heappop(heap)
        j = nxt[i]
        if ids[i] < 0 or j < 0 or get(ids[i] << _SHIFT | ids[j]) != z:
            continue  # stale: this pair no longer sits at i
        ids[i] = z
        ids[j] = -1
        k = nxt[j]
        nxt[i] = k
        if k >= 0:
            prv[k] = i
            w = get(z << _SHIFT | ids[k])
            if w is not None:
                heapq.heappush(heap, (w, i))
        p = prv[i]
        if p >= 0:
            w = get(ids[p] << _SHIFT | z)
            if w is not None:
                heapq.heappush(heap, (w, p))
    return [t for t in ids if t >= 0]


def vocab_bytes(merges: list[tuple[int, int]]) -> list[bytes]:
    """The bytes of the 256 byte tokens and of each merged token.

    >>> vocab_bytes([(104, 105)])[256]
    b'hi'
    """
    if 256 + len(merges) > MAX_VOCAB:
        raise TokenizerError(f"BPE vocabularies are limited to {MAX_VOCAB} tokens")
    table = [bytes([i]) for i in range(256)]
    for k, (a, b) in enumerate(merges):
        if not (0 <= a < 256 + k and 0 <= b < 256 + k):
            raise TokenizerError(
                f"BPE merge {k} ({a}, {b}) refers to a token that does not exist yet; "
                "re-create the tokenizer"
            )
        table.append(table[a] + table[b])
    return table


class PieceCache(dict):  # type: ignore[type-arg]
    """piece → ids, computed on first use; stops growing at ``_CACHE_LIMIT`` pieces."""

    def __init__(self, merge: Callable[[str], list[int]]) -> None:
        super().__init__()
        self.merge = merge

    def __missing__(self, piece: str) -> list[int]:
        ids = self.merge(piece)
        if len(self) < _CACHE_LIMIT:
            self[piece] = ids
        return ids
