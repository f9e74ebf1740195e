"""Byte-level byte-pair encoding (BPE), as in GPT-2 and GPT-4: train, encode, decode.

Text is UTF-8 encoded, so every string is encodable. Tokens ``0..255`` are the single bytes
(token ``b`` is the byte ``b``, as in minbpe and tiktoken), then come the merged tokens in the
order they were learned (merge ``k`` makes token ``256 + k``), then the special tokens.

>>> tok = BPETokenizer.train("aaabdaaabac", vocab_size=259, pattern="none")
>>> tok.merges  # (97, 97) -> 256 'aa', (97, 98) -> 257 'ab', (256, 257) -> 258 'aaab'
[(97, 97), (97, 98), (256, 257)]
>>> tok.encode("aaabdaaabac")
[258, 100, 258, 97, 99]
>>> tok.decode([258, 100])
'aaabd'

Training counts the pre-tokenized pieces once, then merges the most frequent pair again and
again, updating the pair counts incrementally (see :func:`learn_merges`). **Tie-breaking**:
among pairs of equal count the smallest pair of ids wins, compared as ``(left, right)``, so a
given text, vocabulary size and pattern always give the same merges.

Encoding applies the merges by rank (earliest learned first) within each piece, with a cache
per piece; :meth:`BPETokenizer.encode_chunks` encodes a large corpus in several processes. With
``tiktoken`` installed, encoding runs on a ``tiktoken.Encoding`` built from the same merges (see
:mod:`lmforge.tokenizers.engines`), which gives the same ids; ``LMFORGE_BPE_ENGINE=python``
keeps the pure-Python encoder, the reference.
"""

from __future__ import annotations

import codecs
import heapq
import multiprocessing
import os
from collections import Counter, defaultdict
from collections.abc import Collection, Iterable, Iterator
from itertools import chain, pairwise
from typing import Any, Literal

import numpy as np

from lmforge.errors import TokenizerError
from lmforge.tokenizers.base import (
    Tokenizer,
    check_encodable,
    check_ids,
    register_tokenizer,
    special_text_options,
    surrogate_error,
    token_dtype,
)
from lmforge.tokenizers.pretokenize import NO_SPLIT, PATTERNS, SpecialSplitter, Splitter

_SHIFT = 24  # a pair (a, b) of token ids is the int key a << 24 | b (ids below 2**24)
_MASK = (1 << _SHIFT) - 1
_MAX_VOCAB = 1 << _SHIFT
_NO_MERGE = 1 << 62  # larger than every token id
_LONG_PIECE = 256  # pieces of at least this many bytes are merged with a heap
_CACHE_LIMIT = 1 << 18  # pieces remembered by the encoder
_PARALLEL_MIN_CHARS = 1 << 22  # encode_chunks uses several processes from 4M characters

SpecialSet = Literal["all", "none"] | str | Collection[str]


# --- training --------------------------------------------------------------------------------


def count_pieces(
    text: str, pattern: str = "gpt4", special: Iterable[str] = (), progress: bool = False
) -> Counter[str]:
    """How often each piece occurs in ``text`` after pre-tokenization; special tokens are cut
    out and not counted. Text is split in 1M-character chunks (at places where the built-in
    patterns never match across), so memory stays bounded by the number of distinct pieces.

    >>> count_pieces("to be or not to be", pattern="gpt2")
    Counter({' be': 2, 'to': 1, ' or': 1, ' not': 1, ' to': 1})
    """
    from lmforge.data.stream import chunk_text

    splitter = Splitter(pattern)
    segments = SpecialSplitter(special).split(text)[::2]
    counts: Counter[str] = Counter()
    bar = _progress_bar(sum(map(len, segments)), "counting pieces", progress, unit="char")
    for segment in segments:
        for chunk in chunk_text(segment) if pattern in PATTERNS else [segment]:
            counts.update(splitter.split(chunk))
            bar.update(len(chunk))
    bar.close()
    return counts


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


def _progress_bar(total: int, desc: str, progress: bool, unit: str = "merge") -> Any:
    from tqdm import tqdm

    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        unit_scale=unit == "char",
        disable=None if progress else True,
    )


# --- the tokenizer ---------------------------------------------------------------------------


@register_tokenizer
class BPETokenizer(Tokenizer):
    """Byte-level BPE: 256 byte tokens, the learned merges, then the special tokens.

    ``pattern`` is the pre-tokenization split (``gpt2``, ``gpt4``, ``none`` or a regex);
    ``special`` lists special tokens such as ``<|endoftext|>``: they are never split, and
    ``encode`` produces them only when allowed (``allowed_special``).
    """

    kind = "bpe"

    def __init__(
        self,
        merges: Iterable[tuple[int, int]],
        pattern: str = "gpt4",
        special: Iterable[str] = (),
    ) -> None:
        self.merges = [(int(a), int(b)) for a, b in merges]
        self.pattern = pattern
        self.special = list(special)
        self.splitter = Splitter(pattern)
        self.special_splitter = SpecialSplitter(self.special)
        self._vocab_bytes = _merge_bytes(self.merges)
        base = len(self._vocab_bytes)
        _check_special(self.special, base)
        self.special_tokens = {s: base + i for i, s in enumerate(self.special)}
        self._merge_ids = {a << _SHIFT | b: 256 + k for k, (a, b) in enumerate(self.merges)}
        self._token_bytes = self._vocab_bytes + [s.encode("utf-8") for s in self.special]
        self._cache = _PieceCache(self._merge_piece)
        self._engine: Any = None
        self._engine_checked = False

    # -- training

    @classmethod
    def train(
        cls,
        text: str,
        vocab_size: int,
        pattern: str = "gpt4",
        special: Iterable[str] = (),
        min_frequency: int = 1,
        progress: bool = False,
    ) -> BPETokenizer:
        """Learn ``vocab_size - 256 - len(special)`` merges from ``text``.

        Fewer merges are learned when no pair occurs ``min_frequency`` times any more (or the
        text has no pairs left), so ``vocab_size`` of the result may be smaller.

        >>> BPETokenizer.train("abab ab", vocab_size=258, pattern="gpt2").merges
        [(97, 98), (32, 256)]
        """
        special = list(special)
        Splitter(pattern)  # validate the pattern first: a clear error for a bad regex
        _check_special(special, 0)
        if not isinstance(vocab_size, int) or vocab_size < 256 + len(special):
            extra = f" + {len(special)} special token(s)" if special else ""
            raise TokenizerError(
                f"vocabulary size {vocab_size} is too small: byte-level BPE needs the 256 byte "
                f"tokens{extra}; use a vocabulary size of at least {256 + len(special)}"
            )
        if not isinstance(min_frequency, int) or min_frequency < 1:
            raise TokenizerError(f"min_frequency must be at least 1, got {min_frequency}")
        if not text:
            raise TokenizerError("cannot train a tokenizer on empty text; give some text")
        pieces = count_pieces(text, pattern, special, progress)
        word_counts: dict[bytes, int] = {}
        try:
            for piece, count in pieces.items():
                word_counts[piece.encode("utf-8")] = count
        except UnicodeEncodeError as exc:
            raise surrogate_error(exc) from None
        merges = learn_merges(word_counts, vocab_size - 256 - len(special), min_frequency, progress)
        return cls(merges, pattern=pattern, special=special)

    # -- the vocabulary

    @property
    def vocab_size(self) -> int:
        return len(self._token_bytes)

    def token_bytes(self, index: int) -> bytes:
        """The bytes of one token (a special token: its UTF-8 text).

        >>> BPETokenizer([(104, 105)]).token_bytes(256)
        b'hi'
        """
        check_ids([index], self.vocab_size)
        return self._token_bytes[index]

    def id_to_token(self, index: int) -> str:
        """The token's text; bytes that are not whole UTF-8 characters are shown as ``\\xNN``."""
        return self.token_bytes(index).decode("utf-8", errors="backslashreplace")

    @property
    def vocab(self) -> dict[bytes, int]:
        """Token bytes → id for the byte and merged tokens (specials: ``special_tokens``)."""
        return {b: i for i, b in enumerate(self._vocab_bytes)}

    def has_unique_tokens(self) -> bool:
        """Whether no two tokens stand for the same bytes (needed by Hugging Face and
        tiktoken, whose vocabularies are keyed by the token's text)."""
        return len(set(self._vocab_bytes)) == len(self._vocab_bytes)

    def first_inconsistent_token(self) -> int | None:
        """The first merged token that its own bytes do not encode to, or ``None``.

        A vocabulary learned by training has none; a hand-made one may: with merges
        ``(b, c)``, ``(a, b)``, ``(ab, c)``, the bytes ``abc`` encode to ``[a, bc]``, never to
        the token ``abc`` (tiktoken, which merges by the rank of the joined bytes, would).

        >>> BPETokenizer([(98, 99), (97, 98), (257, 99)]).first_inconsistent_token()
        258
        """
        for index in range(256, 256 + len(self.merges)):
            if self.merge_bytes(self._vocab_bytes[index]) != [index]:
                return index
        return None

    # -- encoding

    def encode(
        self,
        text: str,
        allowed_special: SpecialSet = "none",
        disallowed_special: SpecialSet = "all",
    ) -> list[int]:
        """Text → ids. As in tiktoken, special tokens in ``text`` become special ids only when
        allowed (``allowed_special="all"`` or a set of them); a disallowed one (by default any
        that is not allowed) is an error, and the others are encoded as plain text.

        >>> tok = BPETokenizer([], special=["<|endoftext|>"])
        >>> tok.encode("a<|endoftext|>", allowed_special="all")
        [97, 256]
        >>> len(tok.encode("a<|endoftext|>", disallowed_special=()))  # as plain text
        14
        """
        recognised = self._recognised(text, allowed_special, disallowed_special)
        engine = self.engine()
        if engine is not None:
            check_encodable(text)
            if not recognised:
                return engine.encode_ordinary(text)
            return engine.encode(text, allowed_special=set(recognised), disallowed_special=())
        if not recognised:
            return self._encode_python(text)
        splitter = (
            self.special_splitter
            if len(recognised) == len(self.special)
            else SpecialSplitter(recognised)
        )
        ids: list[int] = []
        for i, segment in enumerate(splitter.split(text)):
            if i % 2:
                ids.append(self.special_tokens[segment])
            elif segment:
                ids.extend(self._encode_python(segment))
        return ids

    def encode_ordinary(self, text: str) -> list[int]:
        """Text → ids, treating special-token text as ordinary text.

        >>> BPETokenizer([(104, 105)]).encode_ordinary("hi!")
        [256, 33]
        """
        engine = self.engine()
        if engine is not None:
            check_encodable(text)
            return engine.encode_ordinary(text)
        return self._encode_python(text)

    def _encode_python(self, text: str) -> list[int]:
        """The reference encoder: split, then each piece's ids from the cache or the merges."""
        pieces = self.splitter.split(text)
        try:
            return list(chain.from_iterable(map(self._cache.__getitem__, pieces)))
        except UnicodeEncodeError as exc:
            raise surrogate_error(exc) from None

    def encode_array(
        self,
        text: str,
        allowed_special: SpecialSet = "none",
        disallowed_special: SpecialSet = "all",
    ) -> np.ndarray:
        """Text → ids as a numpy array (uint16 or uint32); special tokens as in
        :meth:`encode`."""
        ids = self.encode(text, allowed_special, disallowed_special)
        return np.fromiter(ids, dtype=token_dtype(self.vocab_size), count=len(ids))

    def encode_batch(
        self,
        texts: Iterable[str],
        allowed_special: SpecialSet = "none",
        disallowed_special: SpecialSet = "all",
    ) -> list[list[int]]:
        """Encode several texts (sharing the piece cache, or on the tiktoken engine).

        >>> BPETokenizer([(104, 105)]).encode_batch(["hi", "ih"])
        [[256], [105, 104]]
        """
        return [self.encode(t, allowed_special, disallowed_special) for t in texts]

    def encode_chunks(
        self,
        chunks: Iterable[str],
        special_text: str = "plain",
        processes: int | None = None,
    ) -> Iterator[np.ndarray]:
        """Encode consecutive pieces of one corpus, in order, one array per piece. Special-token
        text is ordinary text unless ``special_text`` is ``allow`` (it becomes the special
        token) or ``error`` (see :func:`~lmforge.tokenizers.base.special_text_options`).

        On the tiktoken engine the pieces are encoded here; otherwise, from 4M characters on,
        in ``processes`` worker processes (default: one per CPU), each sent the tokenizer once.
        With a split that may merge across lines (``none``, a custom regex, a special token
        containing a line break) the text is encoded in one piece and all ids come with the
        last chunk.
        """
        options = special_text_options(special_text)
        specials = (options["allowed_special"], options["disallowed_special"])
        chunks = list(chunks)
        dtype = token_dtype(self.vocab_size)
        if not chunks:
            return
        if not self._chunks_are_independent():
            for _ in chunks[:-1]:
                yield np.zeros(0, dtype=dtype)
            yield self.encode_array("".join(chunks), *specials)
            return
        if processes is None:
            total = sum(len(c) for c in chunks)
            processes = 1 if self.engine() is not None else _default_processes(total)
        if processes <= 1 or len(chunks) < 2:
            for chunk in chunks:
                yield self.encode_array(chunk, *specials)
            return
        context = multiprocessing.get_context("spawn")  # safe after torch has started threads
        with context.Pool(
            min(processes, len(chunks)),
            initializer=_init_worker,
            initargs=(self.to_dict(), specials),
        ) as pool:
            yield from pool.imap(_encode_in_worker, chunks)

    def _chunks_are_independent(self) -> bool:
        return self.pattern in PATTERNS and not any("\n" in s for s in self.special)

    def _special_set(self, which: SpecialSet) -> set[str]:
        if which == "all":
            return set(self.special)
        if which == "none":
            return set()
        chosen = {which} if isinstance(which, str) else set(which)
        unknown = sorted(chosen - set(self.special))
        if unknown:
            have = ", ".join(self.special) if self.special else "none"
            raise TokenizerError(
                f"{unknown[0]!r} is not a special token of this tokenizer (it has: {have})"
            )
        return chosen

    def _recognised(
        self, text: str, allowed_special: SpecialSet, disallowed_special: SpecialSet
    ) -> list[str]:
        """The special tokens to encode as such in ``text``; an error for a disallowed one
        found in it."""
        if not self.special:
            return []
        allowed = self._special_set(allowed_special)
        disallowed = self._special_set(disallowed_special) - allowed
        if disallowed:
            finder = (
                self.special_splitter
                if len(disallowed) == len(self.special)
                else SpecialSplitter(disallowed)
            )
            found = finder.find(text)
            if found is not None:
                token, position = found
                raise TokenizerError(
                    f"the text contains the special token {token!r} (at character "
                    f"{position}); allow it (allowed_special='all', or --special-text allow) "
                    "to encode it as a special token, or encode it as plain text "
                    "(encode_ordinary, or --special-text plain)"
                )
        return [s for s in self.special if s in allowed]

    def _merge_piece(self, piece: str) -> list[int]:
        """One piece → ids (see :meth:`merge_bytes`)."""
        return self.merge_bytes(piece.encode("utf-8"))

    def merge_bytes(self, data: bytes) -> list[int]:
        """Bytes → ids: repeatedly merge the adjacent pair learned earliest (every occurrence,
        left to right), as training did.

        >>> BPETokenizer([(97, 97), (256, 97)]).merge_bytes(b"aaaaa")
        [256, 257]
        """
        ids = list(data)
        if len(ids) >= _LONG_PIECE:
            return _merge_long(ids, self._merge_ids)
        get = self._merge_ids.get
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

    def engine(self) -> Any:
        """The ``tiktoken.Encoding`` that encodes for this tokenizer, or ``None`` for the
        pure-Python encoder (tiktoken missing, ``LMFORGE_BPE_ENGINE=python``, a split pattern
        other than gpt2/gpt4, or a hand-made vocabulary tiktoken would encode differently).
        Chosen once, on first use."""
        if not self._engine_checked:
            from lmforge.tokenizers.engines import bulk_engine

            self._engine = bulk_engine(self)
            self._engine_checked = True
        return self._engine

    # -- decoding

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """Ids → the bytes they stand for.

        >>> BPETokenizer([]).decode_bytes([104, 105])
        b'hi'
        """
        ids = list(ids)
        table = self._token_bytes
        try:
            if min(ids, default=0) < 0:
                raise IndexError
            return b"".join([table[i] for i in ids])
        except (IndexError, TypeError):
            check_ids(ids, self.vocab_size)
            raise

    def decode(self, ids: Iterable[int]) -> str:
        """Ids → text; bytes that do not form valid UTF-8 become U+FFFD.

        >>> BPETokenizer([]).decode([0xE2, 0x82, 0xAC, 0xE2])
        '€\\ufffd'
        """
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def stream_decoder(self) -> BPEStreamDecoder:
        return BPEStreamDecoder(self)

    # -- the file format

    def _fields(self) -> dict[str, Any]:
        return {
            "pattern": self.pattern,
            "merges": [[a, b] for a, b in self.merges],
            "special": list(self.special),
        }

    @classmethod
    def _from_fields(cls, fields: dict[str, Any]) -> BPETokenizer:
        unknown = set(fields) - {"pattern", "merges", "special"}
        if unknown:
            raise TokenizerError(
                f"the BPE tokenizer description has unknown fields ({', '.join(sorted(unknown))});"
                " it was written by another program or version; re-create it"
            )
        pattern = fields["pattern"]
        merges = fields["merges"]
        special = fields["special"]
        if not isinstance(pattern, str):
            raise TokenizerError(f"the BPE split pattern must be a string, not {pattern!r}")
        if not isinstance(special, list) or not all(isinstance(s, str) for s in special):
            raise TokenizerError("the BPE special tokens must be a list of strings; re-create it")
        if not isinstance(merges, list):
            raise TokenizerError("the BPE merges must be a list of [left, right] id pairs")
        for k, merge in enumerate(merges):
            if (
                not isinstance(merge, list)
                or len(merge) != 2
                or not all(type(i) is int and 0 <= i < 256 + k for i in merge)
            ):
                raise TokenizerError(
                    f"BPE merge {k} is {merge!r}, not a pair of ids of earlier tokens "
                    f"(0..{256 + k - 1}); re-create the tokenizer"
                )
        if len({tuple(m) for m in merges}) != len(merges):
            raise TokenizerError("the BPE merges repeat a pair; re-create the tokenizer")
        return cls([tuple(m) for m in merges], pattern=pattern, special=special)

    def __repr__(self) -> str:
        return f"BPETokenizer(vocab_size={self.vocab_size}, pattern={self.pattern!r})"

    def __getstate__(self) -> dict[str, Any]:
        return self.to_dict()

    def __setstate__(self, state: dict[str, Any]) -> None:
        fields = {k: v for k, v in state.items() if k not in ("format", "version", "kind")}
        self.__init__(  # type: ignore[misc]
            [tuple(m) for m in fields["merges"]], fields["pattern"], fields["special"]
        )


class BPEStreamDecoder:
    """Streaming decode: each token's bytes go through an incremental UTF-8 decoder, which
    holds back an incomplete character until the bytes that complete it arrive (or ``flush``).
    The pieces join to exactly ``decode(ids)``.

    >>> tok = BPETokenizer([]); d = tok.stream_decoder()
    >>> [d.push(b) for b in "€".encode()] + [d.flush()]
    ['', '', '€', '']
    """

    def __init__(self, tokenizer: BPETokenizer) -> None:
        self.tokenizer = tokenizer
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token: int) -> str:
        """Add one token; return the text it completes."""
        return self._decoder.decode(self.tokenizer.token_bytes(token))

    def flush(self) -> str:
        """The text still held back (an incomplete character becomes U+FFFD)."""
        return self._decoder.decode(b"", final=True)


class _PieceCache(dict):  # type: ignore[type-arg]
    """piece → ids, computed on first use; stops growing at ``_CACHE_LIMIT`` pieces."""

    def __init__(self, merge: Any) -> None:
        super().__init__()
        self.merge = merge

    def __missing__(self, piece: str) -> list[int]:
        ids = self.merge(piece)
        if len(self) < _CACHE_LIMIT:
            self[piece] = ids
        return ids


def _merge_long(ids: list[int], merge_ids: dict[int, int]) -> list[int]:
    """The same merges as ``_merge_piece`` in O(n log n) for long pieces: a heap of
    (new id, position) over a linked list; the earliest-learned pair merges first, leftmost
    occurrence first.

    >>> _merge_long([97, 97, 97], {97 << 24 | 97: 256})
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


def _merge_bytes(merges: list[tuple[int, int]]) -> list[bytes]:
    """The bytes of the 256 byte tokens and of each merged token.

    >>> _merge_bytes([(104, 105)])[256]
    b'hi'
    """
    if 256 + len(merges) > _MAX_VOCAB:
        raise TokenizerError(f"BPE vocabularies are limited to {_MAX_VOCAB} tokens")
    table = [bytes([i]) for i in range(256)]
    for k, (a, b) in enumerate(merges):
        if not (0 <= a < 256 + k and 0 <= b < 256 + k):
            raise TokenizerError(
                f"BPE merge {k} ({a}, {b}) refers to a token that does not exist yet; "
                "re-create the tokenizer"
            )
        table.append(table[a] + table[b])
    return table


def _check_special(special: list[str], base: int) -> None:
    for s in special:
        if not isinstance(s, str) or not s:
            raise TokenizerError(f"special token {s!r} must be a non-empty string")
    if len(set(special)) != len(special):
        raise TokenizerError("special tokens must be distinct; drop the repeated one")
    if base + len(special) > _MAX_VOCAB:
        raise TokenizerError(f"BPE vocabularies are limited to {_MAX_VOCAB} tokens")


def _default_processes(total_chars: int) -> int:
    if total_chars < _PARALLEL_MIN_CHARS:
        return 1
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, total_chars // (_PARALLEL_MIN_CHARS // 2)))


_WORKER_TOKENIZER: BPETokenizer | None = None


_WORKER_SPECIALS: tuple[SpecialSet, SpecialSet] = ("all", "all")


def _init_worker(description: dict[str, Any], specials: tuple[SpecialSet, SpecialSet]) -> None:
    global _WORKER_TOKENIZER, _WORKER_SPECIALS
    from lmforge.tokenizers.base import tokenizer_from_dict

    _WORKER_TOKENIZER = tokenizer_from_dict(description)  # type: ignore[assignment]
    _WORKER_TOKENIZER._engine_checked = True  # workers run the pure-Python encoder
    _WORKER_SPECIALS = specials


def _encode_in_worker(chunk: str) -> np.ndarray:
    assert _WORKER_TOKENIZER is not None
    return _WORKER_TOKENIZER.encode_array(chunk, *_WORKER_SPECIALS)


__all__ = [
    "NO_SPLIT",
    "PATTERNS",
    "BPEStreamDecoder",
    "BPETokenizer",
    "count_pieces",
    "learn_merges",
]
