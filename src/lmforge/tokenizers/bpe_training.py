"""BPE training: count the pre-tokenized pieces of a text, then learn merges from them.

Training keeps apart from encoding (as minbpe does): :func:`count_pieces` turns text into
piece counts (memory grows with the distinct pieces, not the text), :func:`learn_merges` turns
piece counts into the merge list. **Tie-breaking**: among pairs of equal count the smallest
pair of ids wins, compared as ``(left, right)``, so training is deterministic.

>>> learn_merges({b"abab": 2, b"ab": 1}, 3)
[(97, 98), (256, 256)]
"""

from __future__ import annotations

import heapq
from collections import Counter, defaultdict
from collections.abc import Iterable
from typing import Any

from lmforge.tokenizers.bpe_merges import PAIR_MASK, PAIR_SHIFT
from lmforge.tokenizers.pretokenize import PATTERNS, SpecialSplitter, Splitter

_SHIFT, _MASK = PAIR_SHIFT, PAIR_MASK


def count_pieces(
    text: str | Iterable[str],
    pattern: str = "gpt4",
    special: Iterable[str] = (),
    progress: bool = False,
    processes: int = 1,
) -> Counter[str]:
    """How often each piece occurs in ``text`` (a string, or the chunks of one cut by
    :func:`lmforge.data.stream.chunk_text`) after pre-tokenization; special tokens are cut out
    and not counted. Chunks are counted one at a time (in ``processes`` worker processes when
    more than one), so memory grows with the number of distinct pieces, not with the text.
    A pattern that may match across lines (``none``, a custom regex) needs the whole text.

    >>> count_pieces("to be or not to be", pattern="gpt2")
    Counter({' be': 2, 'to': 1, ' or': 1, ' not': 1, ' to': 1})
    """
    from lmforge.data.stream import chunk_text
    from lmforge.tokenizers.parallel import ordered_map

    special = list(special)
    chunks = chunk_text(text) if isinstance(text, str) else iter(text)
    if pattern not in PATTERNS or any("\n" in s for s in special):
        chunks = iter(["".join(chunks)])
    counts: Counter[str] = Counter()
    bar = _progress_bar(None, "counting pieces", progress, unit="char")
    counted = ordered_map(_count_in_worker, chunks, processes, _init_counter, (pattern, special))
    for chunk_counts, chars in counted:
        counts.update(chunk_counts)
        bar.update(chars)
    bar.close()
    return counts


_COUNTER: tuple[Splitter, SpecialSplitter] | None = None


def _init_counter(pattern: str, special: list[str]) -> None:
    global _COUNTER
    _COUNTER = (Splitter(pattern), SpecialSplitter(special))


def _count_in_worker(chunk: str) -> tuple[Counter[str], int]:
    """The piece counts of one chunk, and its length."""
    assert _COUNTER is not None
    splitter, special_splitter = _COUNTER
    counts: Counter[str] = Counter()
    for segment in special_splitter.split(chunk)[::2]:
        counts.update(splitter.split(segment))
    return counts, len(chunk)


def learn_merges(
    word_counts: dict[bytes, int],
    num_merges: int,
    min_frequency: int = 1,
    progress: bool = False,
) -> list[tuple[int, int]]:
    """Learn up to ``num_merges`` merges from distinct words (byte strings) and their counts.

    Every word is laid out once as a linked list of symbols. A pair → positions index and a
    max-heap of pair counts give the next merge; merging updates only the counts of the pairs
    around each occurrence (never re-scanning the words). Heap entries whose count went down
    are re-pushed lazily when they reach the top. Stops early when no pair occurs at least
    ``min_frequency`` times. Ties go to the smallest ``(left, right)`` pair of ids.

    >>> learn_merges({b"abab": 2, b"ab": 1}, 3)  # 'ab' x5 -> 256; '256 256' x2 -> 257
    [(97, 98), (256, 256)]
    """
    sym: list[int] = []  # the symbol at each position; -1 once merged into its left neighbour
    weight: list[int] = []  # the count of the word each position belongs to
    nxt: list[int] = []  # next position in the same word, or -1
    prv: list[int] = []  # previous position in the same word, or -1
    for word, count in word_counts.items():
        n = len(word)
        if n < 2:
            continue
        start = len(sym)
        sym.extend(word)
        weight.extend([count] * n)
        nxt.extend(range(start + 1, start + n))
        nxt.append(-1)
        prv.append(-1)
        prv.extend(range(start, start + n - 1))

    counts: dict[int, int] = {}
    where: defaultdict[int, list[int]] = defaultdict(list)  # pair -> left positions (some stale)
    for i, j in enumerate(nxt):
        if j >= 0:
            key = sym[i] << _SHIFT | sym[j]
            counts[key] = counts.get(key, 0) + weight[i]
            where[key].append(i)

    heap = [(-c, key) for key, c in counts.items()]
    heapq.heapify(heap)
    pop, push, get = heapq.heappop, heapq.heappush, counts.get
    merges: list[tuple[int, int]] = []
    created: list[int] = []  # the pairs the current merge made (all contain its new token)

    def gain(pair: int, position: int, w: int) -> None:
        """``pair`` now occurs at ``position`` in a word counted ``w`` times."""
        counts[pair] = get(pair, 0) + w
        positions = where[pair]
        if not positions:
            created.append(pair)
        positions.append(position)

    bar = _progress_bar(num_merges, "merging pairs", progress)
    while len(merges) < num_merges and heap:
        negative, key = pop(heap)
        count = get(key, 0)
        if count != -negative:  # stale entry: re-queue with its current count
            if count > 0:
                push(heap, (-count, key))
            continue
        if count < min_frequency:
            break
        a, b = key >> _SHIFT, key & _MASK
        z = 256 + len(merges)
        merges.append((a, b))
        created.clear()
        for i in where.pop(key):
            j = nxt[i]
            if sym[i] != a or j < 0 or sym[j] != b:
                continue  # stale position: merged away since it was recorded
            w = weight[i]
            p = prv[i]
            if p >= 0:  # (s, a) becomes (s, z)
                s = sym[p] << _SHIFT
                counts[s | a] -= w
                gain(s | z, p, w)
            n = nxt[j]
            if n >= 0:  # (b, s) becomes (z, s)
                counts[b << _SHIFT | sym[n]] -= w
                gain(z << _SHIFT | sym[n], i, w)
                prv[n] = i
            sym[i] = z
            sym[j] = -1
            nxt[i] = n
        del counts[key]
        for k in created:
            count = counts[k]
            if count > 0:
                push(heap, (-count, k))
        bar.update(1)
    bar.close()
    return merges


def _progress_bar(total: int | None, desc: str, progress: bool, unit: str = "merge") -> Any:
    from tqdm import tqdm

    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        unit_scale=unit == "char",
        disable=None if progress else True,
    )
