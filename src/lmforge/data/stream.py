"""Token streams: a corpus encoded once into memory-mapped arrays, and batches drawn from them.

``encode_corpus`` writes ``train.bin`` / ``val.bin`` / ``test.bin`` (uint16 when the vocabulary
fits, else uint32) and ``meta.json`` into ``<cache>/tokens/<key>/``, where the key hashes the
corpus contents and the tokenizer; a second call with the same corpus and tokenizer reuses them.
The split is the corpus's own files, else the last 10 % of the training text is ``val``.

>>> stream = encode_corpus(resolve_corpus("tinyshakespeare"), tokenizer)
>>> stream.tokens("train")[:5]
memmap([18, 47, 56, 57, 58], dtype=uint16)
>>> x, y = WindowSampler(stream.tokens("train"), batch_size=2, block_size=4, seed=0).next_batch()
>>> x.shape, (y[:, :-1] == x[:, 1:]).all()
((2, 4), True)
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from lmforge.data.corpora import Corpus
from lmforge.data.reader import (
    Span,
    char_fraction_offset,
    corpus_spans,
    find_byte,
    read_blocks,
    slice_spans,
    total_bytes,
)
from lmforge.errors import CorpusError, LmforgeError
from lmforge.fileio import atomic_write_json, cache_dir, file_lock
from lmforge.tokenizers.base import Tokenizer, special_text_options, token_dtype
from lmforge.tokenizers.parallel import available_cpus

STREAM_FORMAT_VERSION = 1
DEFAULT_VAL_FRACTION = 0.1
CHUNK_CHARS = 1 << 20  # characters per chunk encoded at a time
PARALLEL_MIN_BYTES = 1 << 22  # corpora from 4 MB on are encoded in worker processes
RECORD_EVERY = 16  # chunks between records of an encoding's progress
PROGRESS_FILE = "progress.json"


@dataclass(frozen=True)
class TokenStream:
    """The encoded splits of one corpus under one tokenizer."""

    directory: Path
    meta: dict[str, Any]

    @property
    def splits(self) -> list[str]:
        """The split names present, e.g. ``['train', 'val']``."""
        return list(self.meta["splits"])

    def tokens(self, split: str) -> np.ndarray:
        """The read-only memmap of one split's token indices."""
        if split not in self.meta["splits"]:
            raise CorpusError(
                f"the corpus has no {split!r} split (it has: {', '.join(self.splits)}); "
                "choose one of those"
            )
        info = self.meta["splits"][split]
        if info["tokens"] == 0:
            return np.zeros(0, dtype=self.meta["dtype"])
        return np.memmap(self.directory / info["file"], dtype=self.meta["dtype"], mode="r")

    def num_tokens(self, split: str) -> int:
        """How many tokens a split has."""
        return int(self.meta["splits"][split]["tokens"])

    def num_chars(self, split: str) -> int:
        """How many characters of text a split has (for bits per character)."""
        return int(self.meta["splits"][split]["chars"])


def split_sources(
    corpus: Corpus, val_fraction: float = DEFAULT_VAL_FRACTION
) -> dict[str, list[Span]]:
    """Where each split's text lies: the corpus's own files, else ``val`` is the held-out tail
    of the training text (see :func:`held_out_offset`). Nothing is read into memory.

    >>> split_sources(Corpus("x", {"train": (Path("lines.txt"),)}))  # "aaaa\nbbbb\ncc\n"
    {'train': [Span(..., start=0, stop=10, ...)], 'val': [Span(..., start=10, stop=13, ...)]}
    """
    sources = {split: corpus_spans(corpus, split) for split in corpus.splits}
    if "val" not in sources:
        train = sources.pop("train")
        cut = held_out_offset(train, val_fraction)
        sources = {"train": slice_spans(train, 0, cut), "val": slice_spans(train, cut), **sources}
    return sources


def split_texts(corpus: Corpus, val_fraction: float = DEFAULT_VAL_FRACTION) -> dict[str, str]:
    """The text of each split (see :func:`split_sources`), read into memory: for small corpora.

    The cut falls at the first line start after that point (else the first space), so that no
    word or token is cut in two; for Tiny Shakespeare it moves nanoGPT's character cut by
    a few characters.

    >>> split_texts(Corpus("x", {"train": (Path("lines.txt"),)}))  # "aaaa\nbbbb\ncc\n"
    {'train': 'aaaa\nbbbb\n', 'val': 'cc\n'}
    """
    return {
        split: "".join(read_blocks(spans))
        for split, spans in split_sources(corpus, val_fraction).items()
    }


def held_out_cut(text: str, val_fraction: float) -> int:
    """Where the held-out tail of ``text`` starts, as a character index: the first line start
    at or after the last ``val_fraction`` of the characters (else the first word start).

    >>> held_out_cut("aaaa\nbbbb\ncc\n", 0.2)
    10
    """
    exact = int(len(text) * (1.0 - val_fraction))
    for boundary in ("\n", " "):
        found = text.find(boundary, exact)
        if 0 <= found < len(text) - 1:
            return found + 1
    return exact


def held_out_offset(spans: list[Span], val_fraction: float) -> int:
    """:func:`held_out_cut` of the spans' text, as a byte offset, found by streaming reads
    (the character where the tail starts, then a search for a line start from there)."""
    size = total_bytes(spans)
    exact = char_fraction_offset(spans, 1.0 - val_fraction)
    for boundary in (b"\n", b" "):
        found = find_byte(spans, boundary, exact, size - 1)
        if found >= 0:
            return found + 1
    return exact


def encode_text(tokenizer: Tokenizer, text: str, special_text: str = "plain") -> np.ndarray:
    """``text`` encoded as the corpus step encodes it (in chunks, special-token text as
    ``special_text`` says), in one array.

    >>> encode_text(CharTokenizer.train("ab"), "abba").tolist()
    [0, 1, 1, 0]
    """
    parts = list(tokenizer.encode_chunks(chunk_text(text), special_text))
    if not parts:
        return np.zeros(0, dtype=token_dtype(tokenizer.vocab_size))
    return np.concatenate(parts)


def chunk_text(text: str, size: int | None = None) -> Iterator[str]:
    """Cut ``text`` into pieces of about ``size`` characters (default :data:`CHUNK_CHARS`)
    for encoding.

    Each cut falls right after a line break that stands between two non-space characters, or
    that is followed by one space and a non-space character, where no tokenizer here (char,
    word, the GPT-2/GPT-4 split patterns) merges across, so encoding the pieces gives the same
    tokens as encoding the whole text.

    >>> list(chunk_text("ab\\ncd\\nef", size=3))
    ['ab\\n', 'cd\\n', 'ef']
    """
    return chunk_stream([text], size)


def chunk_stream(blocks: Iterable[str], size: int | None = None) -> Iterator[str]:
    """:func:`chunk_text` of the text the ``blocks`` join to, holding about ``size`` characters
    and a block at a time: the pieces are the same as ``chunk_text("".join(blocks))``.
    A text with no line break to cut at is held whole."""
    size = CHUNK_CHARS if size is None else size
    buffer = ""
    for block in blocks:
        buffer = buffer + block if buffer else block
        while len(buffer) > size:
            cut = _safe_cut(buffer, size, len(buffer))
            if cut is None:
                break
            yield buffer[:cut]
            buffer = buffer[cut:]
    if buffer:
        yield buffer


def corpus_chunks(spans: list[Span], size: int | None = None) -> Iterator[str]:
    """The spans' text in chunks cut where no token spans the cut (see :func:`chunk_text`),
    read from disk as they are needed."""
    return chunk_stream(read_blocks(spans), size)


def _safe_cut(text: str, position: int, n: int) -> int | None:
    """The first safe cut at or after ``position``: right after a line break that has a
    non-space character on both sides, or that is followed by one space and a non-space
    character (as each line of WikiText is), where the GPT-2 and GPT-4 patterns end a piece
    too."""
    while True:
        newline = text.find("\n", position, n - 1)
        if newline < 0:
            return None
        after = text[newline + 1]
        if not after.isspace():
            if newline > 0 and not text[newline - 1].isspace():
                return newline + 1
        elif after == " " and newline + 2 < n and not text[newline + 2].isspace():
            return newline + 1
        position = newline + 1


def stream_key(
    corpus: Corpus, tokenizer: Tokenizer, val_fraction: float, special_text: str = "plain"
) -> str:
    """The cache key of a corpus encoded by a tokenizer: a hash of both (and of what
    special-token text becomes, for a tokenizer that has special tokens). The corpus is
    hashed by streaming reads of its files."""
    digest = hashlib.sha256()
    digest.update(f"v{STREAM_FORMAT_VERSION}\0{val_fraction!r}\0".encode())
    if getattr(tokenizer, "special_tokens", None):
        digest.update(f"special-text={special_text}\0".encode())
    digest.update(corpus.fingerprint().encode())
    digest.update(tokenizer.to_json().encode("utf-8"))
    return digest.hexdigest()[:24]


def default_processes(total_bytes: int) -> int:
    """Worker processes for encoding a text of ``total_bytes``: one per CPU (one per 2 MB of
    text at most), none below 4 MB.

    >>> default_processes(1000)
    1
    """
    if total_bytes < PARALLEL_MIN_BYTES:
        return 1
    return max(1, min(available_cpus(), total_bytes // (PARALLEL_MIN_BYTES // 2)))


def encode_corpus(
    corpus: Corpus,
    tokenizer: Tokenizer,
    root: str | os.PathLike[str] | None = None,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    progress: bool = True,
    special_text: str = "plain",
    processes: int | None = None,
) -> TokenStream:
    """Encode every split of ``corpus`` once into memmaps under ``root`` (default: the cache's
    ``tokens/`` folder) and return the stream; later calls reuse the files. Special-token text
    in the corpus is ordinary text unless ``special_text`` is ``allow`` (or ``error``).

    The text is read, cut and encoded a chunk at a time, in ``processes`` worker processes
    (default: see :func:`default_processes`), so memory stays flat however large the corpus.
    The work goes to ``.partial-<key>/``, where the chunks done are recorded as they are
    written: after an interruption the next call continues from the last record. One process
    at a time encodes a given key (a lock file); the others then reuse its result.
    """
    special_text_options(special_text)
    base = Path(root) if root is not None else cache_dir() / "tokens"
    key = stream_key(corpus, tokenizer, val_fraction, special_text)
    directory = base / key
    stream = _finished_stream(directory)
    if stream is not None:
        return stream
    base.mkdir(parents=True, exist_ok=True)
    with file_lock(base / f".{key}.lock"):
        stream = _finished_stream(directory)  # another process may have finished it meanwhile
        if stream is not None:
            return stream
        sources = split_sources(corpus, val_fraction)
        if processes is None:
            processes = default_processes(sum(total_bytes(spans) for spans in sources.values()))
        partial = base / f".partial-{key}"
        partial.mkdir(exist_ok=True)
        meta = _write_splits(
            partial, sources, tokenizer, corpus.name, progress, special_text, processes
        )
        os.replace(partial, directory)
        (directory / PROGRESS_FILE).unlink(missing_ok=True)
    return TokenStream(directory, meta)


def _finished_stream(directory: Path) -> TokenStream | None:
    meta_path = directory / "meta.json"
    if not meta_path.is_file():
        return None
    try:
        return TokenStream(directory, json.loads(meta_path.read_text()))
    except (json.JSONDecodeError, OSError):
        shutil.rmtree(directory, ignore_errors=True)
        return None


def _write_splits(
    directory: Path,
    sources: dict[str, list[Span]],
    tokenizer: Tokenizer,
    name: str,
    progress: bool,
    special_text: str,
    processes: int,
) -> dict[str, Any]:
    from tqdm import tqdm

    dtype = token_dtype(tokenizer.vocab_size)
    record_path = directory / PROGRESS_FILE
    states = _recorded_progress(record_path)
    with tqdm(
        total=sum(total_bytes(spans) for spans in sources.values()),
        initial=sum(state["bytes"] for state in states.values()),
        unit="B",
        unit_scale=True,
        desc=f"tokenizing {name}",
        disable=None if progress else True,
    ) as bar:
        for split, spans in sources.items():
            state = states.get(split)
            if state is None or not (state["complete"] or tokenizer.chunks_are_independent):
                state = {"bytes": 0, "tokens": 0, "chars": 0, "complete": False}
            states[split] = state
            if state["complete"]:
                continue
            path = directory / f"{split}.bin"
            with open(path, "r+b" if path.exists() else "wb") as out:
                out.truncate(state["tokens"] * dtype.itemsize)
                out.seek(0, os.SEEK_END)
                rest = slice_spans(spans, state["bytes"])
                unrecorded = 0
                for ids, n_chars, n_bytes in encode_spans(tokenizer, rest, special_text, processes):
                    ids.astype(dtype, copy=False).tofile(out)
                    state["tokens"] += len(ids)
                    state["chars"] += n_chars
                    state["bytes"] += n_bytes
                    bar.update(n_bytes)
                    unrecorded += 1
                    if unrecorded >= RECORD_EVERY and tokenizer.chunks_are_independent:
                        _record(out, record_path, states)
                        unrecorded = 0
                state["complete"] = True
                _record(out, record_path, states)
    splits = {
        split: {"file": f"{split}.bin", "tokens": state["tokens"], "chars": state["chars"]}
        for split, state in states.items()
    }
    if splits["train"]["tokens"] < 2:
        shutil.rmtree(directory, ignore_errors=True)
        raise LmforgeError(
            f"the training split of {name} encodes to {splits['train']['tokens']} token(s); "
            "give a longer corpus"
        )
    meta = {
        "format_version": STREAM_FORMAT_VERSION,
        "dtype": dtype.name,
        "vocab_size": tokenizer.vocab_size,
        "corpus": name,
        "splits": splits,
    }
    atomic_write_json(directory / "meta.json", meta, indent=1)
    return meta


def _recorded_progress(record_path: Path) -> dict[str, dict[str, Any]]:
    """How far an interrupted encoding got (nothing when there is no readable record)."""
    try:
        states = json.loads(record_path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return states if isinstance(states, dict) else {}


def _record(out: BinaryIO, record_path: Path, states: dict[str, dict[str, Any]]) -> None:
    """Make the tokens written so far durable, then record how far each split got."""
    out.flush()
    os.fsync(out.fileno())
    atomic_write_json(record_path, states, indent=1)


def encode_spans(
    tokenizer: Tokenizer, spans: list[Span], special_text: str = "plain", processes: int = 1
) -> Iterator[tuple[np.ndarray, int, int]]:
    """The spans' text encoded a chunk at a time (see :func:`corpus_chunks`), in order:
    ``(ids, characters, bytes)`` for each chunk."""
    sizes: deque[tuple[int, int]] = deque()
    for ids in tokenizer.encode_chunks(_measured_chunks(spans, sizes), special_text, processes):
        n_chars, n_bytes = sizes.popleft()
        yield ids, n_chars, n_bytes


def _measured_chunks(spans: list[Span], sizes: deque[tuple[int, int]]) -> Iterator[str]:
    """The spans' chunks; each one's (characters, bytes) is appended to ``sizes`` as it goes."""
    for chunk in corpus_chunks(spans):
        sizes.append((len(chunk), _utf8_length(chunk)))
        yield chunk


def _utf8_length(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8"))


class WindowSampler:
    """Draws batches of B random windows ``x = a[j:j+T]``, ``y = a[j+1:j+T+1]``, j uniform.

    With ``world_size > 1`` every rank draws the same global batch from the shared seed and
    keeps its own slice of ``batch_size // world_size`` rows, so the ranks together see exactly
    what one process with the whole batch would.
    """

    def __init__(
        self,
        tokens: np.ndarray,
        batch_size: int,
        block_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        split: str = "train",
    ) -> None:
        if batch_size % world_size:
            raise LmforgeError(
                f"batch size {batch_size} does not divide among {world_size} processes; "
                f"use a multiple of {world_size}"
            )
        self.num_starts = len(tokens) - block_size
        if self.num_starts < 1:
            raise LmforgeError(
                f"the {split} split has {len(tokens)} tokens, too few for windows of "
                f"--block-size {block_size} (needs at least {block_size + 1}); "
                "use a smaller --block-size or more text"
            )
        self.tokens = tokens
        self.batch_size = batch_size
        self.block_size = block_size
        self.rank = rank
        self.local_batch = batch_size // world_size
        self.rng = np.random.Generator(np.random.PCG64(seed))
        self._offsets = np.arange(block_size + 1)

    def next_batch(self) -> tuple[np.ndarray, np.ndarray]:
        """The next (x, y) pair of int64 arrays, each [batch_size // world_size, block_size]."""
        starts = self.rng.integers(0, self.num_starts, size=self.batch_size)
        mine = starts[self.rank * self.local_batch : (self.rank + 1) * self.local_batch]
        windows = np.asarray(self.tokens[mine[:, None] + self._offsets], dtype=np.int64)
        return windows[:, :-1], windows[:, 1:]

    def state_dict(self) -> dict[str, Any]:
        """The generator state, so a resumed run draws the same windows."""
        return {"bit_generator": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a state from :meth:`state_dict`."""
        self.rng.bit_generator.state = state["bit_generator"]


def sequential_windows(
    tokens: np.ndarray, block_size: int, batch_size: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Every prediction of a split exactly once: consecutive non-overlapping windows of
    ``block_size`` in batches, then a last shorter window with the remainder.

    >>> [x.tolist() for x, _ in sequential_windows(np.arange(8), block_size=3, batch_size=4)]
    [[[0, 1, 2], [3, 4, 5]], [[6]]]
    """
    predictions = len(tokens) - 1
    full = predictions // block_size
    for first in range(0, full, batch_size):
        rows = range(first, min(first + batch_size, full))
        starts = np.array(rows) * block_size
        windows = np.asarray(tokens[starts[:, None] + np.arange(block_size + 1)], dtype=np.int64)
        yield windows[:, :-1], windows[:, 1:]
    rest = predictions - full * block_size
    if rest > 0:
        tail = np.asarray(tokens[full * block_size :], dtype=np.int64)[None, :]
        yield tail[:, :-1], tail[:, 1:]
