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

Training is :mod:`lmforge.tokenizers.bpe_training`; encoding applies the merges by rank
(earliest learned first) within each piece, with a cache per piece
(:mod:`lmforge.tokenizers.bpe_merges`); a large corpus is encoded in worker processes
(:mod:`lmforge.tokenizers.parallel`). With
``tiktoken`` installed, encoding runs on a ``tiktoken.Encoding`` built from the same merges (see
:mod:`lmforge.tokenizers.engines`), which gives the same ids; ``LMFORGE_BPE_ENGINE=python``
keeps the pure-Python encoder, the reference.
"""

from __future__ import annotations

import codecs
from collections.abc import Collection, Iterable, Iterator
from itertools import chain
from typing import Any, Literal

import numpy as np

from lmforge.errors import TokenizerError
from lmforge.tokenizers.base import (
    NonEmpty,
    Tokenizer,
    check_encodable,
    check_ids,
    register_tokenizer,
    special_text_options,
    surrogate_error,
    token_dtype,
)
from lmforge.tokenizers.bpe_merges import (
    MAX_VOCAB,
    PAIR_SHIFT,
    PieceCache,
    apply_merges,
    vocab_bytes,
)
from lmforge.tokenizers.bpe_training import count_pieces, learn_merges
from lmforge.tokenizers.pretokenize import NO_SPLIT, PATTERNS, SpecialSplitter, Splitter

SpecialSet = Literal["all", "none"] | str | Collection[str]


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
        self._vocab_bytes = vocab_bytes(self.merges)
        base = len(self._vocab_bytes)
        _check_special(self.special, base)
        self.special_tokens = {s: base + i for i, s in enumerate(self.special)}
        self._merge_ids = {a << PAIR_SHIFT | b: 256 + k for k, (a, b) in enumerate(self.merges)}
        self._token_bytes = self._vocab_bytes + [s.encode("utf-8") for s in self.special]
        self._cache = PieceCache(self._merge_piece)
        self._engine: Any = None
        self._engine_checked = False

    # -- training

    @classmethod
    def train(
        cls,
        text: str | Iterable[str],
        vocab_size: int,
        pattern: str = "gpt4",
        special: Iterable[str] = (),
        min_frequency: int = 1,
        progress: bool = False,
        processes: int = 1,
    ) -> BPETokenizer:
        """Learn ``vocab_size - 256 - len(special)`` merges from ``text`` (or from the chunks
        of one, see :func:`~lmforge.tokenizers.bpe_training.count_pieces`, whose piece
        counting may use ``processes`` worker processes).

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
        if isinstance(text, str):
            from lmforge.data.stream import chunk_text

            text = chunk_text(text)
        chunks = NonEmpty(text)
        pieces = count_pieces(chunks, pattern, special, progress, processes)
        chunks.check()
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

    def encode_chunk(self, chunk: str, special_text: str = "plain") -> np.ndarray:
        """One chunk of a corpus → ids: special-token text is ordinary text unless
        ``special_text`` is ``allow`` (it becomes the special token) or ``error``."""
        return self.encode_array(chunk, **special_text_options(special_text))

    def encode_chunks(
        self, chunks: Iterable[str], special_text: str = "plain", processes: int = 1
    ) -> Iterator[np.ndarray]:
        """As :meth:`Tokenizer.encode_chunks`; but with a split that may merge across lines
        (``none``, a custom regex, a special token containing a line break) the text is
        encoded in one piece, and all ids come with the last chunk."""
        if self.chunks_are_independent:
            yield from super().encode_chunks(chunks, special_text, processes)
            return
        chunks = list(chunks)
        for _ in chunks[:-1]:
            yield np.zeros(0, dtype=token_dtype(self.vocab_size))
        if chunks:
            yield self.encode_chunk("".join(chunks), special_text)

    @property
    def chunks_are_independent(self) -> bool:
        """False for a split that may merge across lines (``none``, a custom regex) or a
        special token containing a line break."""
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
        return apply_merges(data, self._merge_ids)

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


def _check_special(special: list[str], base: int) -> None:
    for s in special:
        if not isinstance(s, str) or not s:
            raise TokenizerError(f"special token {s!r} must be a non-empty string")
    if len(set(special)) != len(special):
        raise TokenizerError("special tokens must be distinct; drop the repeated one")
    if base + len(special) > MAX_VOCAB:
        raise TokenizerError(f"BPE vocabularies are limited to {MAX_VOCAB} tokens")


__all__ = [
    "NO_SPLIT",
    "PATTERNS",
    "BPEStreamDecoder",
    "BPETokenizer",
    "count_pieces",
    "learn_merges",
]
