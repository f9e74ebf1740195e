"""Tokenizers for a corpus, from the ``[tokenizer]`` settings of a run (no torch needed).

>>> tok = build_tokenizer(TokenizerConfig(kind="bpe", vocab_size=512), corpus, 0.1)
"""

from __future__ import annotations

from typing import Any

from lmforge.config import TokenizerConfig
from lmforge.data.corpora import Corpus
from lmforge.data.reader import Span, corpus_spans, read_blocks, total_bytes
from lmforge.data.stream import corpus_chunks, default_processes, split_sources
from lmforge.errors import ConfigError
from lmforge.tokenizers.base import Tokenizer, load_tokenizer, train_tokenizer

KINDS = ("char", "word", "bpe")


def tokenizer_options(config: TokenizerConfig) -> dict[str, Any]:
    """The ``train_tokenizer`` options of ``config.kind`` taken from ``config``.

    >>> tokenizer_options(TokenizerConfig(kind="bpe", vocab_size=512))
    {'vocab_size': 512, 'pattern': 'gpt4', 'special': [], 'min_frequency': 1}
    """
    if config.kind == "char":
        return {"unk": config.unk}
    if config.kind == "word":
        return {
            "split": config.word_split,
            "lowercase": config.lowercase,
            "min_freq": config.min_freq,
            "max_vocab": config.max_vocab,
            "unk": config.unk,
        }
    if config.kind == "bpe":
        if config.vocab_size is None:
            raise ConfigError("--tokenizer bpe needs --vocab-size N (for example 4096)")
        return {
            "vocab_size": config.vocab_size,
            "pattern": config.pattern,
            "special": list(config.special),
            "min_frequency": config.min_freq,
        }
    raise ConfigError(f"unknown tokenizer {config.kind!r}; choose {', '.join(KINDS)}")


def tokenizer_training_spans(kind: str, corpus: Corpus, val_fraction: float | None) -> list[Span]:
    """Where the text a tokenizer of ``kind`` learns from lies.

    Character and word vocabularies are built from all of the corpus's text (so held-out text
    has no unknown tokens, as in nanoGPT and PyTorch's word-language-model example); BPE merges
    are learned from the training text only: the ``train`` split, less its held-out tail when
    ``val_fraction`` is given and the corpus has no validation file.
    """
    if kind != "bpe":
        return [span for split in corpus.splits for span in corpus_spans(corpus, split)]
    if val_fraction is None:
        return corpus_spans(corpus, "train")
    return split_sources(corpus, val_fraction)["train"]


def tokenizer_training_text(kind: str, corpus: Corpus, val_fraction: float | None) -> str:
    """The text a tokenizer of ``kind`` learns from (see :func:`tokenizer_training_spans`),
    read into memory: for small corpora."""
    return "".join(read_blocks(tokenizer_training_spans(kind, corpus, val_fraction)))


def build_tokenizer(
    config: TokenizerConfig,
    corpus: Corpus,
    val_fraction: float | None,
    progress: bool = False,
) -> Tokenizer:
    """The run's tokenizer: loaded from ``config.file``, or trained on the corpus (see
    :func:`tokenizer_training_spans`), read a chunk at a time."""
    if config.file:
        return load_tokenizer(config.file)
    options = tokenizer_options(config)
    spans = tokenizer_training_spans(config.kind, corpus, val_fraction)
    if config.kind == "bpe":
        options["progress"] = progress
    if config.kind in ("bpe", "word"):
        options["processes"] = default_processes(total_bytes(spans))
    return train_tokenizer(config.kind, corpus_chunks(spans), **options)
