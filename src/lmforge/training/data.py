"""The trainer's data: the encoded corpus, and the fixed batches every evaluation scores."""

from __future__ import annotations

import numpy as np

from lmforge.config import RunConfig, TrainConfig
from lmforge.data.corpora import resolve_corpus
from lmforge.data.stream import TokenStream, WindowSampler, encode_corpus
from lmforge.errors import TrainingError
from lmforge.tokenizers.base import Tokenizer
from lmforge.tokenizers.build import build_tokenizer


def prepare_data(
    config: RunConfig, progress: bool = True, tokenizer: Tokenizer | None = None
) -> tuple[Tokenizer, TokenStream]:
    """Resolve the corpus, build (or take) the tokenizer and encode the corpus (cached)."""
    corpus = resolve_corpus(config.data.corpus, config.data.data_dir)
    if tokenizer is None:
        tokenizer = build_tokenizer(
            config.tokenizer, corpus, config.data.val_fraction, progress=progress
        )
    stream = encode_corpus(
        corpus,
        tokenizer,
        val_fraction=config.data.val_fraction,
        progress=progress,
        special_text=config.tokenizer.special_text,
    )
    return tokenizer, stream


def fixed_batches(
    tokens: np.ndarray, config: TrainConfig, seed: int, split: str
) -> list[tuple[np.ndarray, np.ndarray]]:
    """``eval_iters`` batches of random windows drawn once, so that every periodic evaluation
    scores the same windows and the curve is not noise."""
    block = min(config.block_size, len(tokens) - 1)
    if block < 1:
        raise TrainingError(
            f"the {split} split has {len(tokens)} token(s), too few to evaluate; "
            "give a longer corpus or a larger --val-fraction"
        )
    sampler = WindowSampler(tokens, config.batch_size, block, seed=seed, split=split)
    return [sampler.next_batch() for _ in range(config.eval_iters)]
