"""Held-out loss, perplexity and bits per character.

``evaluate_run`` scores every prediction of a split exactly once, in consecutive windows of the
run's block size, each starting from an empty context: the exact value of the quantity the
trainer estimates on random windows.

>>> result = evaluate_run(load_run("runs/shakespeare"), split="val")
>>> result.loss, result.perplexity, result.bits_per_char
(1.47, 4.35, 2.12)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from typing import TYPE_CHECKING

import numpy as np
import torch

from lmforge.data.stream import encode_corpus, encode_text, sequential_windows
from lmforge.device import autocast
from lmforge.losses import batch_loss
from lmforge.models.base import LanguageModel

if TYPE_CHECKING:
    from lmforge.runs import Run


@dataclasses.dataclass(frozen=True)
class EvalResult:
    """Mean cross-entropy in nats per token over ``tokens`` predictions of a text of ``chars``
    characters encoded as ``stream_tokens`` tokens."""

    loss: float
    tokens: int
    chars: int
    stream_tokens: int

    @property
    def perplexity(self) -> float:
        """exp(loss)."""
        return math.exp(self.loss)

    @property
    def bits_per_char(self) -> float:
        """loss · (tokens per character) / ln 2: comparable across tokenizers."""
        return self.loss * self.stream_tokens / self.chars / math.log(2)

    def to_dict(self) -> dict[str, float | int]:
        """The JSON form printed by ``lmforge eval --json``."""
        return {
            "loss": self.loss,
            "perplexity": self.perplexity,
            "bits_per_char": self.bits_per_char,
            "tokens": self.tokens,
        }


@torch.no_grad()
def mean_loss(
    model: LanguageModel,
    batches: Iterable[tuple[np.ndarray, np.ndarray]],
    device: torch.device,
    dtype: torch.dtype = torch.float32,
    progress: bool = False,
    total: int | None = None,
    desc: str = "evaluating",
) -> tuple[float, int]:
    """(mean loss per prediction, number of predictions) over ``batches``, model in eval mode."""
    from tqdm import tqdm

    was_training = model.training
    model.eval()
    total_nats = 0.0
    count = 0
    try:
        for x, y in tqdm(batches, total=total, desc=desc, disable=None if progress else True):
            xt = torch.from_numpy(x).to(device)
            yt = torch.from_numpy(y).to(device)
            with autocast(device, dtype):
                nats = batch_loss(model, xt, yt, reduction="sum")
            total_nats += float(nats)
            count += y.size
    finally:
        model.train(was_training)
    return total_nats / max(count, 1), count


def evaluate_tokens(
    model: LanguageModel,
    tokens: np.ndarray,
    block_size: int,
    batch_size: int,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
    progress: bool = False,
) -> tuple[float, int]:
    """(mean loss, predictions) over every next-token prediction in ``tokens``."""
    predictions = len(tokens) - 1
    windows = predictions // block_size + (1 if predictions % block_size else 0)
    batches = -(-max(windows, 1) // batch_size)
    return mean_loss(
        model,
        sequential_windows(tokens, block_size, batch_size),
        device,
        dtype,
        progress=progress,
        total=batches,
    )


def evaluate_run(
    run: Run,
    split: str = "val",
    corpus: str | None = None,
    data_dir: str | None = None,
    batch_size: int | None = None,
    progress: bool = True,
) -> EvalResult:
    """Loss, perplexity and bits per character of a trained run on one split of its corpus
    (or of ``corpus``, a name or path; ``split="all"`` scores the whole text of that corpus)."""
    from lmforge.config import RunConfig
    from lmforge.data.corpora import resolve_corpus
    from lmforge.errors import LmforgeError

    settings = RunConfig.from_dict(run.config["run"])
    source = resolve_corpus(corpus or settings.data.corpus, data_dir or settings.data.data_dir)
    if split == "all":
        text = "".join(source.read(name) for name in source.splits)
        tokens = encode_text(run.tokenizer, text, settings.tokenizer.special_text)
        chars = len(text)
    else:
        stream = encode_corpus(
            source,
            run.tokenizer,
            val_fraction=settings.data.val_fraction,
            progress=progress,
            special_text=settings.tokenizer.special_text,
        )
        tokens = stream.tokens(split)
        chars = stream.num_chars(split)
    if len(tokens) < 2:
        raise LmforgeError(
            f"the {split} split has {len(tokens)} token(s); at least 2 are needed to score it"
        )
    loss, count = evaluate_tokens(
        run.model,
        tokens,
        settings.train.block_size,
        batch_size or settings.train.batch_size,
        run.device,
        progress=progress,
    )
    return EvalResult(loss, count, chars, len(tokens))
