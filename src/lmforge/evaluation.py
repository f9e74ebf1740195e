"""Held-out loss, perplexity, bits per character and (byte-level tokenizers) bits per byte.

``evaluate_run`` scores every prediction of a split exactly once. By default it does so in
consecutive windows of the run's block size, each starting from an empty context: the exact
value of the quantity the trainer estimates on random windows. With ``stride=S`` it slides
windows of the block size by S tokens and scores only the last S predictions of each window
(all of the first), so every prediction has up to a block of context, as in Hugging Face's
perplexity guide; ``stride`` equal to the block size is the default. A model without a finite
context (recurrent, bigram, the unwindowed context model) carries its state through the
whole text instead: every prediction sees all the text before it, whatever S is.

>>> result = evaluate_run(load_run("runs/shakespeare"), split="val")
>>> result.loss, result.perplexity, result.bits_per_char
(1.47, 4.35, 2.12)
>>> evaluate_run(load_run("runs/gpt2"), stride=512, max_tokens=100_000).windows
'sliding windows of 1024 tokens, stride 512'
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from lmforge.data.stream import encode_corpus, encode_text, sequential_windows
from lmforge.device import autocast
from lmforge.errors import LmforgeError
from lmforge.losses import batch_loss
from lmforge.models.base import LanguageModel

if TYPE_CHECKING:
    from lmforge.runs import Run
    from lmforge.tokenizers.base import Tokenizer

# tokenizers whose tokens stand for bytes of UTF-8 text: bits per byte is defined for them
BYTE_LEVEL_KINDS = ("bpe", "hf")
CARRIED_STATE = "carried state"


@dataclasses.dataclass(frozen=True)
class EvalResult:
    """Mean cross-entropy in nats per token over ``tokens`` predictions of a text of ``chars``
    characters (``text_bytes`` UTF-8 bytes, for byte-level tokenizers) encoded as
    ``stream_tokens`` tokens; ``windows`` says how the predictions were scored."""

    loss: float
    tokens: int
    chars: int
    stream_tokens: int
    text_bytes: int | None = None
    windows: str = "non-overlapping windows"

    @property
    def perplexity(self) -> float:
        """exp(loss)."""
        return math.exp(self.loss)

    @property
    def bits_per_char(self) -> float:
        """loss · (tokens per character) / ln 2: comparable across tokenizers."""
        return self.loss * self.stream_tokens / self.chars / math.log(2)

    @property
    def bits_per_byte(self) -> float | None:
        """Total nats / ln 2 / UTF-8 bytes of the text (None unless the tokenizer is
        byte-level): comparable across byte-level tokenizers of any vocabulary.

        >>> EvalResult(2.0, tokens=9, chars=40, stream_tokens=10, text_bytes=36).bits_per_byte
        0.721...
        """
        if self.text_bytes is None:
            return None
        return self.loss * self.tokens / self.text_bytes / math.log(2)

    def to_dict(self) -> dict[str, float | int | str | None]:
        """The JSON form printed by ``lmforge eval --json``."""
        return {
            "loss": self.loss,
            "perplexity": self.perplexity,
            "bits_per_char": self.bits_per_char,
            "bits_per_byte": self.bits_per_byte,
            "tokens": self.tokens,
            "windows": self.windows,
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
    """(mean loss per prediction, number of predictions) over ``batches``, model in eval mode.
    A batch is ``(x, y)``, or ``(x, y, last)`` to score only the last ``last`` predictions of
    each row."""
    from tqdm import tqdm

    was_training = model.training
    model.eval()
    total_nats = 0.0
    count = 0
    try:
        for x, y, *rest in tqdm(
            batches, total=total, desc=desc, disable=None if progress else True
        ):
            last = rest[0] if rest else None
            xt = torch.from_numpy(x).to(device)
            yt = torch.from_numpy(y).to(device)
            with autocast(device, dtype):
                nats = batch_loss(model, xt, yt, reduction="sum", last=last)
            total_nats += float(nats)
            count += y.shape[0] * (last if last is not None else y.shape[1])
    finally:
        model.train(was_training)
    return total_nats / max(count, 1), count


def sliding_windows(
    tokens: np.ndarray, block_size: int, stride: int, batch_size: int
) -> Iterator[tuple[np.ndarray, np.ndarray, int]]:
    """Every prediction of ``tokens`` exactly once, each with up to ``block_size`` tokens of
    context: windows of ``block_size`` starting every ``stride`` tokens, of which only the
    predictions not scored by an earlier window count (all of the first window, the last
    ``stride`` of the others, the rest of a shorter last window). Yields ``(x, y, last)``
    batches whose rows all score their ``last`` predictions.

    >>> [(x.tolist(), last) for x, _, last in sliding_windows(np.arange(8), 4, 2, 8)]
    [([[0, 1, 2, 3]], 4), ([[2, 3, 4, 5]], 2), ([[4, 5, 6]], 1)]
    """
    predictions = len(tokens) - 1
    offsets = np.arange(block_size + 1)

    def window(start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        rows = np.asarray(tokens[start : stop + 1], dtype=np.int64)[None, :]
        return rows[:, :-1], rows[:, 1:]

    first_stop = min(block_size, predictions)
    yield (*window(0, first_stop), first_stop)
    if first_stop == predictions:
        return
    # the full windows after the first: starts stride, 2·stride, ... while start + block fits
    full = (predictions - block_size) // stride
    for first in range(1, full + 1, batch_size):
        starts = np.arange(first, min(first + batch_size, full + 1)) * stride
        rows = np.asarray(tokens[starts[:, None] + offsets], dtype=np.int64)
        yield rows[:, :-1], rows[:, 1:], stride
    scored_until = full * stride + block_size
    if scored_until < predictions:
        yield (*window((full + 1) * stride, predictions), predictions - scored_until)


def evaluate_tokens(
    model: LanguageModel,
    tokens: np.ndarray,
    block_size: int,
    batch_size: int,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
    progress: bool = False,
    stride: int | None = None,
) -> tuple[float, int]:
    """(mean loss, predictions) over every next-token prediction in ``tokens``: in
    non-overlapping windows of ``block_size``, or sliding ones advancing by ``stride`` (see
    :func:`sliding_windows`); a model without a finite context carries its state through the
    whole text when a ``stride`` is given (see :func:`carried_state_loss`)."""
    predictions = len(tokens) - 1
    if stride is not None:
        check_stride(stride, block_size)
        if model.max_context is None:
            return carried_state_loss(model, tokens, block_size, device, dtype, progress)
        full = max(predictions - block_size, 0) // stride
        batches = 2 + -(-full // batch_size)  # the first window, the full ones, the rest
        return mean_loss(
            model,
            sliding_windows(tokens, block_size, stride, batch_size),
            device,
            dtype,
            progress=progress,
            total=batches,
        )
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


def check_stride(stride: int, block_size: int) -> None:
    """A one-line error unless 1 <= ``stride`` <= ``block_size``."""
    if not 1 <= stride <= block_size:
        raise LmforgeError(
            f"--stride must be between 1 and the block size {block_size}, got {stride}; "
            f"--stride {block_size} is the default non-overlapping windows, smaller strides "
            "give each prediction more context"
        )


@torch.no_grad()
def carried_state_loss(
    model: LanguageModel,
    tokens: np.ndarray,
    chunk: int,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
    progress: bool = False,
) -> tuple[float, int]:
    """(mean loss, predictions) of ``tokens`` read in one pass, ``chunk`` tokens per call with
    the model's state carried between calls, so every prediction is conditioned on all the text
    before it (for models without a finite context, where a stride means nothing)."""
    from tqdm import tqdm

    was_training = model.training
    model.eval()
    total_nats, predictions, state = 0.0, len(tokens) - 1, None
    try:
        starts = range(0, predictions, chunk)
        for start in tqdm(starts, desc="evaluating", disable=None if progress else True):
            piece = np.asarray(tokens[start : start + chunk + 1], dtype=np.int64)
            x = torch.from_numpy(piece[None, :-1]).to(device)
            y = torch.from_numpy(piece[1:]).to(device)
            with autocast(device, dtype):
                logits, state = model(x, state)
            total_nats += float(F.cross_entropy(logits[0].float(), y, reduction="sum"))
    finally:
        model.train(was_training)
    return total_nats / max(predictions, 1), predictions


def decoded_size(tokenizer: Tokenizer, tokens: np.ndarray) -> tuple[int, int]:
    """(characters, UTF-8 bytes) of the text ``tokens`` decode to; a byte-level tokenizer's
    byte count is exact even where ``tokens`` end inside a character.

    >>> decoded_size(BPETokenizer([]), np.array([0xC3, 0xA9, 0x41]))  # "é" "A": 2 chars
    (2, 3)
    """
    ids = [int(i) for i in tokens]
    decode_bytes = getattr(tokenizer, "decode_bytes", None)
    if decode_bytes is not None:
        data = decode_bytes(ids)
        return len(data.decode("utf-8", errors="replace")), len(data)
    text = tokenizer.decode(ids)
    return len(text), len(text.encode("utf-8", errors="surrogatepass"))


def evaluate_run(
    run: Run,
    split: str = "val",
    corpus: str | None = None,
    data_dir: str | None = None,
    batch_size: int | None = None,
    progress: bool = True,
    stride: int | None = None,
    max_tokens: int | None = None,
    block_size: int | None = None,
) -> EvalResult:
    """Loss, perplexity and bits per character (and per byte) of a trained run on one split
    of its corpus (or of ``corpus``, a name or path; ``split="all"`` scores the whole text of
    that corpus), in windows of ``block_size`` (default: the run's training window) that
    slide by ``stride`` if given; ``max_tokens`` scores only the first N tokens of the split."""
    from lmforge.config import RunConfig
    from lmforge.data.corpora import resolve_corpus

    settings = RunConfig.from_dict(run.config["run"])
    block = block_size or settings.train.block_size
    context = run.model.max_context
    if block < 1 or (context is not None and block > context):
        raise LmforgeError(
            f"--block-size must be between 1 and the model's context {context}, got {block}"
        )
    if stride is not None:
        check_stride(stride, block)
    if max_tokens is not None and max_tokens < 2:
        raise LmforgeError(f"--max-tokens must be at least 2 (one prediction), got {max_tokens}")
    source = resolve_corpus(corpus or settings.data.corpus, data_dir or settings.data.data_dir)
    text_bytes = None
    if split == "all":
        text = "".join(source.read(name) for name in source.splits)
        tokens = encode_text(run.tokenizer, text, settings.tokenizer.special_text)
        chars, text_bytes = len(text), len(text.encode("utf-8", errors="surrogatepass"))
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
    byte_level = run.tokenizer.kind in BYTE_LEVEL_KINDS
    if max_tokens is not None and max_tokens < len(tokens):
        tokens = tokens[:max_tokens]
        chars, text_bytes = decoded_size(run.tokenizer, tokens)
    elif byte_level and text_bytes is None:
        text_bytes = decoded_size(run.tokenizer, tokens)[1]
    loss, count = evaluate_tokens(
        run.model,
        tokens,
        block,
        batch_size or settings.train.batch_size,
        run.device,
        progress=progress,
        stride=stride,
    )
    return EvalResult(
        loss,
        count,
        chars,
        len(tokens),
        text_bytes=text_bytes if byte_level else None,
        windows=describe_windows(run.model, block, stride),
    )


def describe_windows(model: LanguageModel, block_size: int, stride: int | None) -> str:
    """How :func:`evaluate_tokens` scores ``model``'s predictions, in words."""
    if stride is None:
        return f"non-overlapping windows of {block_size} tokens"
    if model.max_context is None:
        unused = "--stride has no effect"
        if model.family == "bigram":
            return f"each prediction from the one token before it ({unused})"
        window = getattr(model.config, "block_size", None)
        if model.family == "context" and window is not None:
            return f"{CARRIED_STATE}: each prediction averages its last {window} tokens ({unused})"
        return f"{CARRIED_STATE} through the whole text ({unused})"
    return f"sliding windows of {block_size} tokens, stride {stride}"
