"""Character-level tokenizer: one token per Unicode character.

>>> tok = CharTokenizer.train("hello")
>>> tok.vocab, tok.encode("hell"), tok.decode([3, 2])
({'e': 0, 'h': 1, 'l': 2, 'o': 3}, [1, 0, 2, 2], 'ol')
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from lmforge.errors import TokenizerError
from lmforge.tokenizers.base import (
    UNK,
    NonEmpty,
    Tokenizer,
    check_encodable,
    check_ids,
    register_tokenizer,
    surrogate_error,
    token_dtype,
    unknown_token_error,
)


@register_tokenizer
class CharTokenizer(Tokenizer):
    """Vocabulary: the distinct characters of the training text, sorted by code point (as in
    nanoGPT and char-rnn), plus ``<unk>`` at the end when trained with ``unk=True``."""

    kind = "char"

    def __init__(self, chars: Iterable[str], unk: bool = False) -> None:
        self.chars = list(chars)
        if not self.chars:
            raise TokenizerError("character tokenizer has no characters; re-create it")
        for c in self.chars:
            if not isinstance(c, str) or len(c) != 1:
                raise TokenizerError(f"character tokenizer entry {c!r} is not one character")
        check_encodable("".join(self.chars))
        if len(set(self.chars)) != len(self.chars):
            raise TokenizerError("character tokenizer has repeated characters; re-create it")
        self.unk = unk
        self.vocab = {c: i for i, c in enumerate(self.chars)}
        self.unk_id = len(self.chars) if unk else None
        codepoints = np.array([ord(c) for c in self.chars], dtype=np.int64)
        order = np.argsort(codepoints)
        self._sorted_codepoints = codepoints[order]
        self._sorted_ids = order

    @classmethod
    def train(cls, text: str | Iterable[str], unk: bool = False) -> CharTokenizer:
        """Build the vocabulary from ``text`` (a string, or its chunks: read a chunk at a
        time).

        >>> CharTokenizer.train("abca").chars
        ['a', 'b', 'c']
        """
        chunks = NonEmpty(text)
        seen: set[str] = set()
        for chunk in chunks:
            seen.update(chunk)
        chunks.check()
        return cls(sorted(seen), unk=unk)

    @property
    def vocab_size(self) -> int:
        return len(self.chars) + (1 if self.unk else 0)

    def encode(self, text: str) -> list[int]:
        return self.encode_array(text).tolist()

    def encode_array(self, text: str) -> np.ndarray:
        """Vectorised: code points looked up in the sorted vocabulary with ``searchsorted``."""
        dtype = token_dtype(self.vocab_size)
        if not text:
            return np.zeros(0, dtype=dtype)
        try:
            encoded = text.encode("utf-32-le")
        except UnicodeEncodeError as exc:
            raise surrogate_error(exc) from None
        points = np.frombuffer(encoded, dtype=np.uint32).astype(np.int64)
        pos = np.searchsorted(self._sorted_codepoints, points)
        pos = np.minimum(pos, len(self._sorted_codepoints) - 1)
        found = self._sorted_codepoints[pos] == points if len(pos) else pos.astype(bool)
        ids = self._sorted_ids[pos]
        if not found.all():
            if self.unk_id is None:
                first = int(np.argmin(found))
                raise unknown_token_error(text[first], first)
            ids = np.where(found, ids, self.unk_id)
        return ids.astype(dtype)

    def decode(self, ids: Iterable[int]) -> str:
        ids = list(ids)
        check_ids(ids, self.vocab_size)
        return "".join(self.id_to_token(i) for i in ids)

    def stream_decoder(self) -> _CharStreamDecoder:
        return _CharStreamDecoder(self)

    def id_to_token(self, index: int) -> str:
        return UNK if index == self.unk_id else self.chars[index]

    def _fields(self) -> dict[str, Any]:
        return {"chars": "".join(self.chars), "unk": self.unk}

    @classmethod
    def _from_fields(cls, fields: dict[str, Any]) -> CharTokenizer:
        if not isinstance(fields["chars"], str):
            raise TypeError(f"chars must be a string, not {fields['chars']!r}")
        return cls(list(fields["chars"]), unk=bool(fields["unk"]))


class _CharStreamDecoder:
    """Characters decode independently: each token is its own text."""

    def __init__(self, tokenizer: CharTokenizer) -> None:
        self.tokenizer = tokenizer

    def push(self, token: int) -> str:
        return self.tokenizer.decode([token])

    def flush(self) -> str:
        return ""
