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
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lmforge.data.corpora import Corpus
from lmforge.errors import CorpusError, LmforgeError
from lmforge.fileio import cache_dir
from lmforge.tokenizers.base import Tokenizer, special_text_options, token_dtype

STREAM_FORMAT_VERSION = 1
DEFAULT_VAL_FRACTION = 0.1
CHUNK_CHARS = 1 << 20


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


def split_texts(corpus: Corpus, val_fraction: float = DEFAULT_VAL_FRACTION) -> dict[str, str]:
    """The text of each split: the corpus's own files, else ``val`` is the last
    ``val_fraction`` of the training text.

    The cut falls at the first line start after that point (else the first space), so that no
    word or token is cut in two; for Tiny Shakespeare it moves nanoGPT's character cut by
    a few characters.

    >>> split_texts(Corpus("x", {"train": (Path("lines.txt"),)}))  # "aaaa\nbbbb\ncc\n"
    {'train': 'aaaa\nbbbb\n', 'val': 'cc\n'}
    """
    texts = {split: corpus.read(split) for split in corpus.splits}
    if "val" not in texts:
        text = texts.pop("train")
        cut = held_out_cut(text, val_fraction)
        texts = {"train": text[:cut], "val": text[cut:], **texts}
    return texts


def held_out_cut(text: str, val_fraction: float) -> int:
    """Where the held-out tail of ``text`` starts (see :func:`split_texts`).

    >>> held_out_cut("aaaa\nbbbb\ncc\n", 0.2)
    10
    """
    exact = int(len(text) * (1.0 - val_fraction))
    for boundary in ("\n", " "):
        found = text.find(boundary, exact)
        if 0 <= found < len(text) - 1:
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


def chunk_text(text: str, size: int = CHUNK_CHARS) -> Iterator[str]:
    """Cut ``text`` into pieces of about ``size`` characters for encoding.

    Each cut falls right after a line break that stands between two non-space characters, or
    that is followed by one space and a non-space character, where no tokenizer here (char,
    word, the GPT-2/GPT-4 split patterns) merges across, so encoding the pieces gives the same
    tokens as encoding the whole text.

    >>> list(chunk_text("ab\\ncd\\nef", size=3))
    ['ab\\n', 'cd\\n', 'ef']
    """
    start = 0
    n = len(text)
    while n - start > size:
        cut = _safe_cut(text, start + size, n)
        if cut is None:
            break
        yield text[start:cut]
        start = cut
    if start < n:
        yield text[start:]


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
    special-token text becomes, for a tokenizer that has special tokens)."""
    digest = hashlib.sha256()
    digest.update(f"v{STREAM_FORMAT_VERSION}\0{val_fraction!r}\0".encode())
    if getattr(tokenizer, "special_tokens", None):
        digest.update(f"special-text={special_text}\0".encode())
    digest.update(corpus.fingerprint().encode())
    digest.update(tokenizer.to_json().encode("utf-8"))
    return digest.hexdigest()[:24]


def encode_corpus(
    corpus: Corpus,
    tokenizer: Tokenizer,
    root: str | os.PathLike[str] | None = None,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    progress: bool = True,
    special_text: str = "plain",
) -> TokenStream:
    """Encode every split of ``corpus`` once into memmaps under ``root`` (default: the cache's
    ``tokens/`` folder) and return the stream; later calls reuse the files. Special-token text
    in the corpus is ordinary text unless ``special_text`` is ``allow`` (or ``error``)."""
    special_text_options(special_text)
    base = Path(root) if root is not None else cache_dir() / "tokens"
    directory = base / stream_key(corpus, tokenizer, val_fraction, special_text)
    meta_path = directory / "meta.json"
    if meta_path.is_file():
        try:
            return TokenStream(directory, json.loads(meta_path.read_text()))
        except (json.JSONDecodeError, OSError):
            shutil.rmtree(directory, ignore_errors=True)
    texts = split_texts(corpus, val_fraction)
    base.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".encoding-", dir=base))
    try:
        meta = _write_splits(staging, texts, tokenizer, corpus.name, progress, special_text)
        try:
            os.replace(staging, directory)
        except OSError:  # another process finished first: use its copy
            shutil.rmtree(staging, ignore_errors=True)
            meta = json.loads(meta_path.read_text())
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return TokenStream(directory, meta)


def _write_splits(
    directory: Path,
    texts: dict[str, str],
    tokenizer: Tokenizer,
    name: str,
    progress: bool,
    special_text: str,
) -> dict[str, Any]:
    from tqdm import tqdm

    dtype = token_dtype(tokenizer.vocab_size)
    total_chars = sum(len(t) for t in texts.values())
    splits: dict[str, dict[str, Any]] = {}
    with tqdm(
        total=total_chars,
        unit="char",
        unit_scale=True,
        desc=f"tokenizing {name}",
        disable=None if progress else True,
    ) as bar:
        for split, text in texts.items():
            count = 0
            filename = f"{split}.bin"
            with open(directory / filename, "wb") as out:
                pieces = list(chunk_text(text))
                encoded = tokenizer.encode_chunks(pieces, special_text)
                for piece, ids in zip(pieces, encoded, strict=True):
                    ids.astype(dtype, copy=False).tofile(out)
                    count += len(ids)
                    bar.update(len(piece))
            splits[split] = {"file": filename, "tokens": count, "chars": len(text)}
    if splits["train"]["tokens"] < 2:
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
    (directory / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    return meta


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
