"""The tokenizer interface, the JSON file format, and loading by kind.

A tokenizer maps text to a list of token indices and back. Its vocabulary is a
token → index dictionary of size ``vocab_size``. One JSON file describes a tokenizer fully:

    {"format": "lmforge-tokenizer", "version": 1, "kind": "char", ...kind-specific fields}

and ``load_tokenizer(path)`` dispatches on ``kind``, so ``load(save(t)) == t``.
"""

from __future__ import annotations

import json
import os
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import regex

from lmforge.errors import TokenizerError
from lmforge.fileio import atomic_write_json

FORMAT = "lmforge-tokenizer"
VERSION = 1
UNK = "<unk>"
_SURROGATE = regex.compile("[\ud800-\udfff]")  # faster than re on wide strings
# What special-token text in a corpus becomes (``--special-text``): ordinary text unless the
# user opts in, as in tiktoken. The values are the BPE ``encode`` options of each mode.
SPECIAL_TEXT: dict[str, dict[str, Any]] = {
    "plain": {"allowed_special": "none", "disallowed_special": ()},
    "allow": {"allowed_special": "all", "disallowed_special": ()},
    "error": {"allowed_special": "none", "disallowed_special": "all"},
}


class Tokenizer(ABC):
    """Text ↔ token indices. Subclasses set ``kind`` and implement the abstract methods."""

    kind: ClassVar[str]

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """The number of tokens, I."""

    @abstractmethod
    def encode(self, text: str) -> list[int]:
        """Text → token indices."""

    def encode_continuation(self, text: str) -> list[int]:
        """Text that continues a sequence → token indices: as ``encode``, but without the
        tokens some tokenizers put around every text (the BOS of Llama's, kind ``hf``)."""
        return self.encode(text)

    @abstractmethod
    def decode(self, ids: Iterable[int]) -> str:
        """Token indices → text."""

    @abstractmethod
    def id_to_token(self, index: int) -> str:
        """The printable form of one token (for tables and plots)."""

    @abstractmethod
    def _fields(self) -> dict[str, Any]:
        """The kind-specific part of the JSON description."""

    @classmethod
    @abstractmethod
    def _from_fields(cls, fields: dict[str, Any]) -> Tokenizer:
        """Rebuild from the JSON description made by ``_fields``."""

    def encode_array(self, text: str) -> np.ndarray:
        """Text → token indices as a numpy array of the smallest unsigned type that fits."""
        return np.asarray(self.encode(text), dtype=token_dtype(self.vocab_size))

    @property
    def chunks_are_independent(self) -> bool:
        """Whether the chunks of :func:`lmforge.data.stream.chunk_text` encode on their own
        to the ids of the whole text (so they can be encoded in parallel and resumed)."""
        return True

    def encode_chunk(self, chunk: str, special_text: str = "plain") -> np.ndarray:
        """One chunk of a corpus → ids, special-token text as ``special_text`` says (see
        :func:`special_text_options`; it matters only to tokenizers with special tokens)."""
        special_text_options(special_text)
        return self.encode_array(chunk)

    def encode_chunks(
        self, chunks: Iterable[str], special_text: str = "plain", processes: int = 1
    ) -> Iterator[np.ndarray]:
        """Encode consecutive chunks of one text (cut where no token spans the cut, see
        :func:`lmforge.data.stream.chunk_text`), one array per chunk, in order; with
        ``processes > 1`` in that many worker processes. Used by the corpus → memmap step."""
        if processes > 1:
            from lmforge.tokenizers.parallel import encode_in_processes

            yield from encode_in_processes(self, chunks, special_text, processes)
            return
        for chunk in chunks:
            yield self.encode_chunk(chunk, special_text)

    def stream_decoder(self) -> StreamDecoder:
        """A decoder that turns tokens into text one at a time (for streaming output)."""
        return StreamDecoder(self)

    def token_bytes(self, index: int) -> bytes:
        """The UTF-8 bytes one token stands for, when it is decoded alone."""
        return self.decode([index]).encode("utf-8")

    def to_dict(self) -> dict[str, Any]:
        """The full JSON description of this tokenizer."""
        return {"format": FORMAT, "version": VERSION, "kind": self.kind, **self._fields()}

    def to_json(self) -> str:
        """The JSON text ``save`` writes (canonical, so equal tokenizers give equal text)."""
        return json.dumps(self.to_dict(), ensure_ascii=False, indent=1)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the tokenizer to one JSON file, atomically."""
        atomic_write_json(path, self.to_dict(), indent=1)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Tokenizer) and self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash(self.to_json())

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size})"


class NonEmpty:
    """The chunks of a text to train on (a string is one chunk), noting whether any had text;
    :meth:`check` raises the error for empty text after they were read."""

    def __init__(self, text: str | Iterable[str]) -> None:
        self.chunks = [text] if isinstance(text, str) else text
        self.seen = False

    def __iter__(self) -> Iterator[str]:
        for chunk in self.chunks:
            if chunk:
                self.seen = True
                yield chunk

    def check(self) -> None:
        """Raise a clear error when no chunk had any text."""
        if not self.seen:
            raise TokenizerError("cannot train a tokenizer on empty text; give some text")


class StreamDecoder:
    """Incremental decoding: ``push`` one token, get the new text; ``flush`` at the end.

    The text pushed so far always equals ``decode`` of the tokens so far, except that a
    trailing U+FFFD (an incomplete multi-byte character of a byte-level tokenizer) is held back
    until the bytes that complete it arrive, or until ``flush``.

    Each push decodes a short window only: the tokens since the last fully emitted one, and
    that one for context (a decoder may spell a token differently at the start of a text), so
    a token costs the same however long the output is already.

    >>> d = tok.stream_decoder(); d.push(tok.encode("h")[0]) + d.push(tok.encode("i")[0])
    'hi'
    """

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.start = 0  # the window: ids[start:]; its first token is context once settled
        self.context = ""  # the context's text: decode(ids[start : start + 1]), or ""
        self.held = 0  # characters of the window's text returned so far
        self.emitted = 0  # characters returned in all

    def push(self, token: int) -> str:
        """Add one token; return the text it completes."""
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids[self.start :])
        if not text.startswith(self.context):  # the context reads otherwise: wait for flush
            return ""
        end = len(text)
        while end > self.held and text[end - 1] == "\ufffd":
            end -= 1
        out = text[self.held : end]
        self.held = end
        self.emitted += len(out)
        if end == len(text):  # all out: the next window starts at this token
            self.start = len(self.ids) - 1
            self.context = self.tokenizer.decode(self.ids[self.start :])
            self.held = len(self.context)
        return out

    def flush(self) -> str:
        """The text still held back."""
        text = self.tokenizer.decode(self.ids)
        out = text[self.emitted :]
        self.emitted = len(text)
        self.start, self.context, self.held = len(self.ids), "", 0
        return out


_KINDS: dict[str, type[Tokenizer]] = {}


def register_tokenizer(cls: type[Tokenizer]) -> type[Tokenizer]:
    """Class decorator: make ``cls`` loadable by its ``kind``."""
    _KINDS[cls.kind] = cls
    return cls


def tokenizer_kinds() -> list[str]:
    """The registered tokenizer kinds, e.g. ``['char', 'word', 'bpe']``."""
    _import_builtin_kinds()
    return list(_KINDS)


def _import_builtin_kinds() -> None:
    import importlib

    for module in ("char", "word", "bpe", "hf"):
        try:
            importlib.import_module(f"lmforge.tokenizers.{module}")
        except ModuleNotFoundError as exc:
            if exc.name != f"lmforge.tokenizers.{module}":
                raise


def train_tokenizer(kind: str, text: str | Iterable[str], **options: Any) -> Tokenizer:
    """Train a tokenizer of ``kind`` on ``text`` (a string, or its chunks as cut by
    :func:`lmforge.data.stream.chunk_text`); ``options`` are the kind's own (``lowercase``,
    ``min_freq``, ``max_vocab``, ``unk``, ``split`` for ``word``; ``vocab_size``, ``pattern``,
    ``special`` for ``bpe``).

    >>> train_tokenizer("word", "the good, the bad").vocab
    {'the': 0, 'good': 1, ',': 2, 'bad': 3}
    """
    _import_builtin_kinds()
    if kind not in _KINDS:
        raise TokenizerError(f"unknown tokenizer kind {kind!r}; choose one of {', '.join(_KINDS)}")
    return _KINDS[kind].train(text, **options)  # type: ignore[attr-defined]


def tokenizer_from_dict(data: Any, source: str = "tokenizer description") -> Tokenizer:
    """Rebuild a tokenizer from its JSON description, with clear errors for other formats."""
    _import_builtin_kinds()
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        hint = ""
        if isinstance(data, dict) and "model" in data and "pre_tokenizer" in data:
            hint = " (it looks like a Hugging Face tokenizer.json)"
        raise TokenizerError(
            f"{source} is not an lmforge tokenizer file{hint}; "
            "make one with `lmforge tokenize train` or take RUN/tokenizer.json"
        )
    version = data.get("version")
    if version != VERSION:
        raise TokenizerError(
            f"{source} has tokenizer format version {version!r}, but this lmforge reads "
            f"version {VERSION}; re-create it with this version of lmforge"
        )
    kind = data.get("kind")
    if not isinstance(kind, str) or kind not in _KINDS:
        raise TokenizerError(
            f"{source} has unknown tokenizer kind {kind!r}; known kinds: {', '.join(_KINDS)}"
        )
    fields = {k: v for k, v in data.items() if k not in ("format", "version", "kind")}
    try:
        return _KINDS[kind]._from_fields(fields)
    except (KeyError, TypeError, ValueError) as exc:
        raise TokenizerError(f"{source} is damaged ({exc!r}); re-create the tokenizer") from None


def load_tokenizer(path: str | os.PathLike[str]) -> Tokenizer:
    """Load a tokenizer saved with :meth:`Tokenizer.save`."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TokenizerError(f"tokenizer file not found: {path}; check the path") from None
    except (UnicodeDecodeError, IsADirectoryError):
        raise TokenizerError(f"{path} is not a JSON tokenizer file; check the path") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TokenizerError(
            f"{path} is not valid JSON (line {exc.lineno}, column {exc.colno}); "
            "re-create the tokenizer"
        ) from None
    return tokenizer_from_dict(data, source=str(path))


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every index fits in 16 bits, else uint32.

    >>> token_dtype(65), token_dtype(100_000)
    (dtype('uint16'), dtype('uint32'))
    """
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


def special_text_options(mode: str) -> dict[str, Any]:
    """The BPE ``encode`` options of a ``--special-text`` mode: ``plain`` (special-token text
    is ordinary text, the default), ``allow`` (it becomes the special token) or ``error``.

    >>> special_text_options("allow")
    {'allowed_special': 'all', 'disallowed_special': ()}
    """
    if mode not in SPECIAL_TEXT:
        raise TokenizerError(
            f"unknown special-text mode {mode!r}; choose one of {', '.join(SPECIAL_TEXT)}"
        )
    return SPECIAL_TEXT[mode]


def check_encodable(text: str) -> None:
    """Raise a clear error for a lone surrogate in ``text``: UTF-8 cannot encode it, so no
    tokenizer can hold it, save it or encode it.

    >>> check_encodable("a\ud800")
    TokenizerError: the text contains U+D800, a lone surrogate ...
    """
    match = None if text.isascii() else _SURROGATE.search(text)
    if match is not None:
        raise surrogate_error(
            UnicodeEncodeError("utf-8", text, match.start(), match.start() + 1, "surrogate")
        )


def surrogate_error(exc: UnicodeEncodeError) -> TokenizerError:
    """The error for the lone surrogate that made ``exc``."""
    char = exc.object[exc.start]
    return TokenizerError(
        f"the text contains U+{ord(char):04X}, a lone surrogate that UTF-8 cannot encode; "
        "fix the text (e.g. read it with errors='replace')"
    )


def unknown_token_error(token: str, position: int) -> TokenizerError:
    """The error for a token missing from the vocabulary, naming it and the fix."""
    return TokenizerError(
        f"token {token!r} (at character {position}) is not in the vocabulary; train the "
        "tokenizer with --unk (unknown tokens then become <unk>), or on text that contains it"
    )


def check_ids(ids: Sequence[int], vocab_size: int) -> None:
    """Raise a clear error for an index outside ``[0, vocab_size)``."""
    for i in ids:
        if not 0 <= i < vocab_size:
            raise TokenizerError(
                f"token index {i} is outside the vocabulary (size {vocab_size}); "
                "the ids were made with another tokenizer"
            )
