"""Word-level tokenizer: words, punctuation marks and line breaks are tokens.

Vocabulary in order of first appearance, as in the seed's example:

>>> tok = WordTokenizer.train("the good, the bad and the ugly")
>>> tok.vocab
{'the': 0, 'good': 1, ',': 2, 'bad': 3, 'and': 4, 'ugly': 5}
>>> tok.encode("the good, the bad and the ugly")
[0, 1, 2, 0, 3, 4, 0, 5]

Word-level decoding cannot restore the original spacing; it joins tokens with single spaces
(none before closing punctuation, after opening brackets or around line breaks), so that
``encode(decode(ids)) == ids``.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from typing import Any

import numpy as np

from lmforge.errors import TokenizerError
from lmforge.tokenizers.base import (
    UNK,
    Tokenizer,
    check_encodable,
    check_ids,
    register_tokenizer,
    token_dtype,
    unknown_token_error,
)

SPLIT_PATTERNS = {
    # <markers> such as <unk> stay whole; words keep inner apostrophes (don't, o'er);
    # every other non-space character is a token of its own; each line break is a token.
    "words": r"<[^<>\s]+>|\w+(?:['’]\w+)*|[^\w\s]|\n",
    # Split on whitespace only, as PyTorch's word-language-model example does.
    "whitespace": r"[^\s]+|\n",
}
_NO_SPACE_BEFORE = frozenset(".,;:!?)]}\n")
_NO_SPACE_AFTER = frozenset("([{\n")


@register_tokenizer
class WordTokenizer(Tokenizer):
    """Words and punctuation as tokens. Options: ``split`` (``words`` separates punctuation,
    ``whitespace`` splits on spaces only), ``lowercase``, ``min_freq``, ``max_vocab``, ``unk``."""

    kind = "word"

    def __init__(
        self, tokens: Iterable[str], split: str = "words", lowercase: bool = False
    ) -> None:
        if split not in SPLIT_PATTERNS:
            raise TokenizerError(
                f"unknown word split {split!r}; choose one of {', '.join(SPLIT_PATTERNS)}"
            )
        self.tokens = list(tokens)
        if not all(isinstance(t, str) and t for t in self.tokens):
            raise TokenizerError("word tokenizer tokens must be non-empty strings; re-create it")
        check_encodable("".join(self.tokens))
        self.vocab = {t: i for i, t in enumerate(self.tokens)}
        if len(self.vocab) != len(self.tokens):
            raise TokenizerError("word tokenizer has repeated tokens; re-create it")
        self.split = split
        self.lowercase = lowercase
        self.unk_id = self.vocab.get(UNK)
        self._pattern = re.compile(SPLIT_PATTERNS[split])

    @classmethod
    def train(
        cls,
        text: str | Iterable[str],
        split: str = "words",
        lowercase: bool = False,
        min_freq: int = 1,
        max_vocab: int | None = None,
        unk: bool = False,
        processes: int = 1,
    ) -> WordTokenizer:
        """Build the vocabulary from ``text`` (a string, or its chunks as cut by
        :func:`lmforge.data.stream.chunk_text`: counted a chunk at a time, in ``processes``
        worker processes when more than one).

        Tokens seen fewer than ``min_freq`` times are dropped; ``max_vocab`` keeps the most
        frequent (ties: earliest first). Kept tokens stay in order of first appearance. When
        tokens are dropped, or with ``unk=True``, ``<unk>`` ends the vocabulary (if the text
        does not already contain it).

        >>> WordTokenizer.train("a a b c", min_freq=2).tokens
        ['a', '<unk>']
        """
        if split not in SPLIT_PATTERNS:
            raise TokenizerError(
                f"unknown word split {split!r}; choose one of {', '.join(SPLIT_PATTERNS)}"
            )
        if min_freq < 1:
            raise TokenizerError(f"min_freq must be at least 1, got {min_freq}")
        if max_vocab is not None and max_vocab < 2:
            raise TokenizerError(f"max_vocab must be at least 2, got {max_vocab}")
        chunks = [text] if isinstance(text, str) else text
        from lmforge.tokenizers.parallel import ordered_map

        counted = ordered_map(_count_words, chunks, processes, _init_counter, (split, lowercase))
        counts: Counter[str] = Counter()  # insertion order = first appearance
        for chunk_counts in counted:
            counts.update(chunk_counts)
        if not counts:
            raise TokenizerError("cannot train a word tokenizer on text with no words")
        first_seen = {w: i for i, w in enumerate(counts)}
        kept = [w for w, c in counts.items() if c >= min_freq]
        if max_vocab is not None:
            words = [w for w in kept if w != UNK]
            needs_unk = unk or UNK in kept or len(kept) < len(counts) or len(words) > max_vocab
            room = max_vocab - 1 if needs_unk else max_vocab  # <unk> always has its slot
            if len(words) > room:
                by_count = sorted(words, key=lambda w: (-counts[w], first_seen[w]))
                chosen = {*by_count[:room], UNK}
                kept = [w for w in kept if w in chosen]
        dropped = len(kept) < len(counts)
        if (unk or dropped) and UNK not in kept:
            kept.append(UNK)
        return cls(kept, split=split, lowercase=lowercase)

    @property
    def vocab_size(self) -> int:
        return len(self.tokens)

    def split_text(self, text: str) -> list[str]:
        """The token strings of ``text``, before lookup.

        >>> WordTokenizer(["x"]).split_text("Don't stop, <unk>!")
        ["Don't", 'stop', ',', '<unk>', '!']
        """
        return self._pattern.findall(text.lower() if self.lowercase else text)

    def encode(self, text: str) -> list[int]:
        vocab = self.vocab
        words = self.split_text(text)
        try:
            return [vocab[w] for w in words]
        except KeyError:
            if self.unk_id is not None:
                unk_id = self.unk_id
                return [vocab.get(w, unk_id) for w in words]
            missing = next(w for w in words if w not in vocab)
            source = text.lower() if self.lowercase else text
            position = next(m.start() for m in self._pattern.finditer(source) if m[0] == missing)
            raise unknown_token_error(missing, position) from None

    def encode_array(self, text: str) -> np.ndarray:
        return np.asarray(self.encode(text), dtype=token_dtype(self.vocab_size))

    def decode(self, ids: Iterable[int]) -> str:
        ids = list(ids)
        check_ids(ids, self.vocab_size)
        pieces: list[str] = []
        previous: str | None = None
        for i in ids:
            token = self.tokens[i]
            pieces.append(token if self._glued(previous, token) else " " + token)
            previous = token
        return "".join(pieces)

    def _glued(self, previous: str | None, token: str) -> bool:
        """Whether ``token`` follows ``previous`` without a space."""
        if previous is None or previous == "\n" or token == "\n":
            return True
        return self.split == "words" and (token in _NO_SPACE_BEFORE or previous in _NO_SPACE_AFTER)

    def stream_decoder(self) -> _WordStreamDecoder:
        return _WordStreamDecoder(self)

    def id_to_token(self, index: int) -> str:
        return self.tokens[index]

    def _fields(self) -> dict[str, Any]:
        return {"split": self.split, "lowercase": self.lowercase, "tokens": self.tokens}

    @classmethod
    def _from_fields(cls, fields: dict[str, Any]) -> WordTokenizer:
        return cls(fields["tokens"], split=fields["split"], lowercase=bool(fields["lowercase"]))


_COUNTER: tuple[re.Pattern[str], bool] | None = None


def _init_counter(split: str, lowercase: bool) -> None:
    global _COUNTER
    _COUNTER = (re.compile(SPLIT_PATTERNS[split]), lowercase)


def _count_words(chunk: str) -> Counter[str]:
    """How often each token occurs in one chunk, in order of first appearance."""
    assert _COUNTER is not None
    pattern, lowercase = _COUNTER
    return Counter(pattern.findall(chunk.lower() if lowercase else chunk))


class _WordStreamDecoder:
    """Each token's text depends only on the token before it (for the space)."""

    def __init__(self, tokenizer: WordTokenizer) -> None:
        self.tokenizer = tokenizer
        self.previous: str | None = None

    def push(self, token: int) -> str:
        check_ids([token], self.tokenizer.vocab_size)
        text = self.tokenizer.tokens[token]
        glued = self.tokenizer._glued(self.previous, text)
        self.previous = text
        return text if glued else " " + text

    def flush(self) -> str:
        return ""
