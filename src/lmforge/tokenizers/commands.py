"""``lmforge tokenize train|encode|export|stats``: the tokenizer commands (no torch imported).

>>> lmforge tokenize train --kind bpe --vocab-size 4096 --pattern gpt2 input.txt -o tok.json
>>> lmforge tokenize encode tok.json input.txt -o ids.bin      # uint16 when it fits, as nanoGPT
>>> lmforge tokenize export tok.json --format hf -o tokenizer.json
>>> lmforge tokenize stats tok.json input.txt
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from lmforge.config import TokenizerConfig
from lmforge.data.corpora import Corpus, resolve_corpus
from lmforge.data.reader import Span, corpus_spans, read_blocks, total_bytes
from lmforge.errors import LmforgeError
from lmforge.fileio import atomic_path
from lmforge.tokenizers.base import Tokenizer, load_tokenizer, token_dtype
from lmforge.tokenizers.build import build_tokenizer


def tokenize_train(args: argparse.Namespace) -> int:
    """Train a tokenizer on a corpus and save it as JSON."""
    if args.corpus is None:
        if not args.special:
            raise LmforgeError("give the CORPUS to train on (a name, a text file or a directory)")
        # "--special A B CORPUS -o tok.json": --special took the corpus as its last value.
        args.corpus = args.special.pop()
    config = TokenizerConfig(
        kind=args.kind,
        vocab_size=args.vocab_size,
        pattern=args.pattern,
        special=list(args.special or []),
        lowercase=args.lowercase,
        min_freq=args.min_freq,
        max_vocab=args.max_vocab,
        unk=args.unk,
        word_split=args.word_split,
    )
    corpus = resolve_corpus(args.corpus, args.data_dir)
    start = time.perf_counter()
    tokenizer = build_tokenizer(config, corpus, val_fraction=None, progress=not args.quiet)
    elapsed = time.perf_counter() - start
    tokenizer.save(args.output)
    details = ""
    if tokenizer.kind == "bpe":
        merges = len(tokenizer.merges)  # type: ignore[attr-defined]
        details = f" ({merges:,} merges, pattern {tokenizer.pattern})"  # type: ignore[attr-defined]
        if args.vocab_size is not None and tokenizer.vocab_size < args.vocab_size:
            details += (
                f"; fewer than the {args.vocab_size:,} asked for: no pair of the text occurs "
                f"{args.min_freq} time(s) any more"
            )
    print(
        f"trained a {tokenizer.kind} tokenizer of {tokenizer.vocab_size:,} tokens{details} "
        f"in {elapsed:.2f} s; saved to {args.output}",
        file=sys.stderr,
    )
    return 0


def tokenize_encode(args: argparse.Namespace) -> int:
    """Encode a corpus into a raw little-endian uint16/uint32 file (nanoGPT's ``.bin``), a
    chunk at a time, in worker processes for a large corpus."""
    tokenizer = load_tokenizer(args.tokenizer)
    spans = _corpus_spans(resolve_corpus(args.corpus, args.data_dir), args.split)
    dtype = token_dtype(tokenizer.vocab_size).newbyteorder("<")
    count = 0
    with atomic_path(args.output) as tmp, open(tmp, "wb") as out:
        for ids in _encode(tokenizer, spans, args.special_text, not args.quiet):
            ids.astype(dtype, copy=False).tofile(out)
            count += len(ids)
    n_bytes = total_bytes(spans)
    per_token = f"{n_bytes / count:.3f}" if count else "-"
    print(
        f"{count:,} tokens ({dtype.name}, {per_token} bytes per token) written to {args.output}",
        file=sys.stderr,
    )
    return 0


def tokenize_export(args: argparse.Namespace) -> int:
    """Write a Hugging Face ``tokenizer.json`` (or a transformers directory)."""
    from lmforge.tokenizers.export import export_hf, save_hf_tokenizer_dir

    tokenizer = load_tokenizer(args.tokenizer)
    if args.output.endswith(".json"):
        written = export_hf(tokenizer, args.output)
        print(f"wrote {written}", file=sys.stderr)
    else:
        directory = save_hf_tokenizer_dir(tokenizer, args.output)
        print(
            f"wrote {directory}/ (tokenizer.json, tokenizer_config.json, "
            "special_tokens_map.json): load it with AutoTokenizer.from_pretrained",
            file=sys.stderr,
        )
    return 0


def tokenize_stats(args: argparse.Namespace) -> int:
    """Tokens, bytes per token, and the longest and most frequent tokens on a corpus."""
    tokenizer = load_tokenizer(args.tokenizer)
    corpus = resolve_corpus(args.corpus, args.data_dir)
    text = _corpus_text(corpus, args.split)
    spans = _corpus_spans(corpus, args.split)
    parts = list(_encode(tokenizer, spans, args.special_text, not args.quiet and not args.json))
    ids = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    stats = corpus_stats(tokenizer, text, ids, args.top)
    if args.json:
        print(json.dumps(stats, ensure_ascii=False))
        return 0
    print(f"tokenizer:        {tokenizer.kind}, {tokenizer.vocab_size:,} tokens")
    print(f"text:             {stats['chars']:,} characters, {stats['bytes']:,} bytes")
    print(f"tokens:           {stats['tokens']:,}")
    print(f"bytes per token:  {stats['bytes_per_token']:.3f}")
    print(f"chars per token:  {stats['chars_per_token']:.3f}")
    print(f"tokens used:      {stats['used']:,} of {tokenizer.vocab_size:,}")
    print("longest tokens:")
    for row in stats["longest"]:
        print(f"  {row['id']:>7}  {row['token']!r}  ({row['bytes']} bytes, seen {row['count']:,})")
    print("most frequent tokens:")
    for row in stats["most_frequent"]:
        print(f"  {row['id']:>7}  {row['token']!r}  {row['count']:,} ({row['share']:.2%})")
    return 0


def corpus_stats(tokenizer: Tokenizer, text: str, ids: np.ndarray, top: int) -> dict[str, Any]:
    """Counts for ``tokenize stats``: ``ids`` is ``text`` encoded. The longest tokens leave
    out special tokens.

    >>> corpus_stats(CharTokenizer.train("abba"), "abba", np.array([0, 1, 1, 0]), 1)["tokens"]
    4
    """
    counts = np.bincount(np.asarray(ids, dtype=np.int64), minlength=tokenizer.vocab_size)
    n_tokens = len(ids)
    n_bytes = len(text.encode("utf-8"))
    lengths = np.array([len(tokenizer.token_bytes(i)) for i in range(tokenizer.vocab_size)])
    specials = set(getattr(tokenizer, "special_tokens", {}).values())
    learned = [i for i in range(tokenizer.vocab_size) if i not in specials]
    longest = sorted(learned, key=lambda i: (-lengths[i], i))[:top]
    frequent = [int(i) for i in np.argsort(-counts, kind="stable")[:top] if counts[i] > 0]
    return {
        "chars": len(text),
        "bytes": n_bytes,
        "tokens": n_tokens,
        "bytes_per_token": n_bytes / n_tokens if n_tokens else 0.0,
        "chars_per_token": len(text) / n_tokens if n_tokens else 0.0,
        "vocab_size": tokenizer.vocab_size,
        "used": int((counts > 0).sum()),
        "longest": [
            {
                "id": i,
                "token": tokenizer.id_to_token(i),
                "bytes": int(lengths[i]),
                "count": int(counts[i]),
            }
            for i in longest
        ],
        "most_frequent": [
            {
                "id": i,
                "token": tokenizer.id_to_token(i),
                "count": int(counts[i]),
                "share": float(counts[i] / n_tokens),
            }
            for i in frequent
        ],
    }


def _corpus_spans(corpus: Corpus, split: str) -> list[Span]:
    splits = list(corpus.splits) if split == "all" else [split]
    spans = [span for name in splits for span in corpus_spans(corpus, name)]
    if not total_bytes(spans):
        raise LmforgeError(f"corpus {corpus.name!r} is empty; give a file with some text")
    return spans


def _corpus_text(corpus: Corpus, split: str) -> str:
    return "".join(read_blocks(_corpus_spans(corpus, split)))


def _encode(
    tokenizer: Tokenizer, spans: list[Span], special_text: str, progress: bool
) -> Iterator[np.ndarray]:
    from tqdm import tqdm

    from lmforge.data.stream import default_processes, encode_spans

    size = total_bytes(spans)
    processes = default_processes(size) if tokenizer.chunks_are_independent else 1
    with tqdm(
        total=size, unit="B", unit_scale=True, desc="encoding", disable=None if progress else True
    ) as bar:
        for ids, _, n_bytes in encode_spans(tokenizer, spans, special_text, processes):
            bar.update(n_bytes)
            yield ids
