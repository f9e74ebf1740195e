"""Streaming reads of a corpus split: the text in blocks, never the whole text in memory.

A split's text is described by :class:`Span` s: byte ranges of its files, plus the line break
that joins two files when the first does not end with one (as :meth:`Corpus.read` joins them).
Offsets into a split's text are *byte* offsets of that joined text, so a split can be cut
without reading it (``slice_spans``), and a cut made at a line break never splits a character.

>>> spans = corpus_spans(resolve_corpus("tinyshakespeare"), "train")
>>> sum(len(block) for block in read_blocks(spans))
1115394
"""

from __future__ import annotations

import codecs
import os
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from lmforge.data.corpora import Corpus, open_corpus_file
from lmforge.errors import CorpusError

BLOCK_BYTES = 1 << 22


@dataclass(frozen=True)
class Span:
    """Bytes ``start:stop`` of ``path`` (its whole size ``size``), followed by a line break
    when ``newline`` is set."""

    path: Path
    start: int
    stop: int
    size: int
    newline: bool = False

    @property
    def length(self) -> int:
        """How many bytes of the split's text this span stands for."""
        return self.stop - self.start + (1 if self.newline else 0)


def corpus_spans(corpus: Corpus, split: str) -> list[Span]:
    """The spans of one split: its files in order, each but a lone file ending with a line
    break (the text :meth:`Corpus.read` returns)."""
    if split not in corpus.splits:
        have = ", ".join(corpus.splits)
        raise CorpusError(
            f"corpus {corpus.name!r} has no {split!r} split (it has: {have}); choose one of those"
        )
    paths = corpus.splits[split]
    spans = []
    for path in paths:
        size = _size(Path(path))
        newline = len(paths) > 1 and not _ends_with_newline(Path(path), size)
        spans.append(Span(Path(path), 0, size, size, newline))
    return spans


def total_bytes(spans: list[Span]) -> int:
    """The length of the spans' text in UTF-8 bytes."""
    return sum(span.length for span in spans)


def slice_spans(spans: list[Span], start: int, stop: int | None = None) -> list[Span]:
    """The spans of bytes ``start:stop`` of the spans' text (``stop=None``: to the end).

    >>> slice_spans([Span(Path("a"), 0, 10, 10, newline=True)], 4, 11)
    [Span(path=PosixPath('a'), start=4, stop=10, size=10, newline=True)]
    """
    out = []
    position = 0
    end = total_bytes(spans) if stop is None else stop
    for span in spans:
        first, last = position, position + span.length
        position = last
        if last <= start or first >= end:
            continue
        lo = span.start + max(0, start - first)
        hi = span.start + min(span.stop - span.start, end - first)
        newline = span.newline and end >= last
        if hi > lo or newline:
            out.append(replace(span, start=lo, stop=hi, newline=newline))
    return out


def read_bytes(spans: list[Span], block: int | None = None) -> Iterator[bytes]:
    """The spans' text as raw UTF-8 bytes, in blocks of at most ``block`` bytes (default
    :data:`BLOCK_BYTES`)."""
    block = block or BLOCK_BYTES
    for span in spans:
        with open_corpus_file(span.path) as fh:
            fh.seek(span.start)
            left = span.stop - span.start
            while left > 0:
                data = fh.read(min(block, left))
                if not data:  # the file shrank while being read
                    raise CorpusError(f"{span.path} changed while being read; read it again")
                left -= len(data)
                yield data
        if span.newline:
            yield b"\n"


def read_blocks(spans: list[Span], block: int | None = None) -> Iterator[str]:
    """The spans' text, decoded, in blocks of about ``block`` bytes; the same one-line errors as
    :func:`~lmforge.data.corpora.read_text` for a file that is not UTF-8 or is empty."""
    for span in spans:
        decoder = codecs.getincrementaldecoder("utf-8")()
        position = span.start
        whole = span.start == 0 and span.stop == span.size
        seen_text = False
        for data in read_bytes([replace(span, newline=False)], block):
            pending = len(decoder.getstate()[0])
            try:
                text = decoder.decode(data)
            except UnicodeDecodeError as exc:
                raise _not_utf8(span.path, position - pending + exc.start, exc) from None
            seen_text = seen_text or bool(data.strip())
            position += len(data)
            if text:
                yield text
        pending = len(decoder.getstate()[0])
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError as exc:
            raise _not_utf8(span.path, position - pending + exc.start, exc) from None
        if whole and not seen_text:
            raise CorpusError(
                f"corpus file {span.path} is empty; give a file that contains some text"
            )
        if span.newline:
            yield "\n"


def char_fraction_offset(spans: list[Span], fraction: float) -> int:
    """The byte offset of character ``int(n * fraction)`` of the spans' text, ``n`` being its
    number of characters (UTF-8 bytes that start one). The text is read once, counting each
    block's characters; then only the block holding that character is read again.

    >>> char_fraction_offset([Span(Path("a"), 0, 6, 6)], 0.5)  # "aé b\n": 5 characters
    3
    """
    blocks: list[tuple[int, int]] = []  # (byte offset, characters before) of each block
    chars = position = 0
    for data in read_bytes(spans):
        blocks.append((position, chars))
        chars += int(np.count_nonzero(_char_starts(data)))
        position += len(data)
    target = int(chars * fraction)
    ends = [*blocks[1:], (position, chars)]
    for (start, before), (stop, after) in zip(blocks, ends, strict=True):
        if after > target:
            data = b"".join(read_bytes(slice_spans(spans, start, stop)))
            return start + int(np.flatnonzero(_char_starts(data))[target - before])
    return position


def _char_starts(data: bytes) -> np.ndarray:
    """Which bytes of UTF-8 ``data`` start a character (are not continuation bytes)."""
    return (np.frombuffer(data, dtype=np.uint8) & 0xC0) != 0x80


def find_byte(spans: list[Span], needle: bytes, start: int, stop: int) -> int:
    """The first offset in ``start:stop`` of the spans' text holding the byte ``needle``, or
    -1."""
    position = 0
    for data in read_bytes(spans):
        end = position + len(data)
        if end > start and position < stop:
            found = data.find(needle, max(0, start - position), stop - position)
            if found >= 0:
                return position + found
        position = end
        if position >= stop:
            break
    return -1


def _size(path: Path) -> int:
    with open_corpus_file(path) as fh:
        return os.fstat(fh.fileno()).st_size


def _ends_with_newline(path: Path, size: int) -> bool:
    if size == 0:
        return False
    with open_corpus_file(path) as fh:
        fh.seek(size - 1)
        return fh.read(1) == b"\n"


def _not_utf8(path: Path, offset: int, exc: UnicodeDecodeError) -> CorpusError:
    bad = exc.object[exc.start : exc.start + 1].hex()
    return CorpusError(
        f"{path} is not UTF-8 text: byte 0x{bad} at byte offset {offset} ({exc.reason}); "
        f"convert it first, e.g. iconv -f latin1 -t utf-8 {path} > fixed.txt"
    )
