"""Generation and scoring, one loop for every model.

Generation warms the model up on the prompt once, then feeds one sampled token at a time while
carrying the model's state (hidden state, running sum or key/value cache).

A model with a finite context ``max_context`` (the Transformer's block size) sees a long prompt
cropped to its last ``max_context`` tokens. Once its window is full, generation slides it
instead of failing: the window restarts on the last ``max_context - max_context // 4`` tokens,
which are re-read once from scratch to rebuild the cache, and caching goes on from there (see
:func:`slide_window`). Every token is therefore predicted from between 3/4 of the block and the
whole block of context, exactly as a from-scratch run on that window would predict it, and the
cache stays useful past the block size: a slide costs one forward pass over 3/4 of a block every
``max_context // 4 + 1`` tokens, where re-reading the last ``max_context`` tokens at every step
(nanoGPT's cache-less loop) costs one per token.

>>> cfg = SampleConfig(max_new_tokens=50, temperature=0.8, top_k=40, seed=1)
>>> generate(model, tokenizer, "ROMEO:", cfg)
[' I will not speak...']
>>> for piece in stream(model, tokenizer, "ROMEO:", cfg):
...     print(piece, end="", flush=True)
>>> score(model, tokenizer, "It is great to hear that", ["you have succeeded", "potato is round"])
[ScoredContinuation(continuation='you have succeeded', logprob=-9.1, ...), ...]
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from lmforge.device import model_device
from lmforge.errors import ConfigError
from lmforge.models.base import LanguageModel
from lmforge.tokenizers.base import StreamDecoder, Tokenizer


@dataclasses.dataclass
class SampleConfig:
    """How to sample.

    ``temperature`` 0 is greedy; ``top_k`` 0/None and ``top_p`` 1/None switch those filters
    off; ``repetition_penalty`` > 1 discourages tokens already in the prompt or output (as in
    CTRL and Hugging Face); generation of a sample ends at ``max_new_tokens`` or right before
    the first of the ``stop`` strings. ``num_samples`` samples are drawn as one batch.
    """

    max_new_tokens: int = 200
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float = 1.0
    stop: Sequence[str] = ()
    num_samples: int = 1
    seed: int | None = None

    def validate(self) -> None:
        """Raise a one-line error for an impossible setting."""
        if self.max_new_tokens < 0:
            raise ConfigError(f"--length must be 0 or more, got {self.max_new_tokens}")
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise ConfigError(
                f"--temperature must be a finite number, 0 or more, got {self.temperature}"
            )
        if self.top_k is not None and self.top_k < 0:
            raise ConfigError(f"--top-k must be 0 (off) or more, got {self.top_k}")
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"--top-p must be in (0, 1], got {self.top_p}")
        if not (math.isfinite(self.repetition_penalty) and self.repetition_penalty > 0):
            raise ConfigError(
                f"--repetition-penalty must be a positive finite number (1 is off), "
                f"got {self.repetition_penalty}"
            )
        if self.num_samples < 1:
            raise ConfigError(f"--num-samples must be at least 1, got {self.num_samples}")
        if any(s == "" for s in self.stop):
            raise ConfigError("a --stop string must not be empty")


def prompt_ids(tokenizer: Tokenizer, prompt: str) -> list[int]:
    """The prompt's tokens; an empty prompt starts from the BOS token of a tokenizer that puts
    one first, else from a line break (or token 0 if the vocabulary has none), as nanoGPT
    does."""
    ids = tokenizer.encode(prompt)
    if not ids:
        try:
            ids = tokenizer.encode("\n")
        except Exception:
            ids = []
        ids = ids or [0]
    return ids


def process_logits(
    logits: torch.Tensor, config: SampleConfig, seen: torch.Tensor | None = None
) -> torch.Tensor:
    """Apply the repetition penalty, temperature, top-k and top-p to next-token logits [N, I].

    Filtered-out tokens get -inf. With temperature 0 the result is only used for argmax.

    >>> process_logits(torch.tensor([[1.0, 3.0, 2.0]]), SampleConfig(top_k=2))
    tensor([[-inf, 3., 2.]])
    """
    logits = logits.float()
    if seen is not None and config.repetition_penalty != 1.0:
        penalty = config.repetition_penalty
        penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
        logits = torch.where(seen, penalised, logits)
    if config.temperature == 0:
        return logits
    if config.temperature != 1.0:
        logits = logits / config.temperature
    if config.top_k and config.top_k < logits.shape[-1]:
        kth = torch.topk(logits, config.top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, -math.inf)
    if config.top_p is not None and config.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        before = probs.cumsum(dim=-1) - probs  # mass of the tokens ranked above each one
        remove_sorted = before > config.top_p
        remove = torch.zeros_like(remove_sorted).scatter(-1, order, remove_sorted)
        logits = logits.masked_fill(remove, -math.inf)
    return logits


def sample_next(
    logits: torch.Tensor, config: SampleConfig, generator: torch.Generator | None
) -> torch.Tensor:
    """One token per row of processed logits [N, I]: argmax at temperature 0, else a draw
    with ``torch.multinomial``."""
    if config.temperature == 0:
        return logits.argmax(dim=-1)
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def slide_window(start: int, length: int, max_context: int | None) -> int:
    """Where the context window begins once the history has ``length`` tokens, if it began at
    ``start`` (the window is ``history[start:length]``). The one sliding policy of generation,
    shared by the cached loop and by any from-scratch recomputation it is checked against:
    the window keeps its start while it fits in ``max_context``; when it would not, it restarts
    on the last ``max_context - max_context // 4`` tokens. ``max_context=None``: never slides.

    >>> slide_window(0, 256, 256), slide_window(0, 257, 256), slide_window(65, 321, 256)
    (0, 65, 65)
    >>> slide_window(65, 322, 256), slide_window(0, 10**6, None)
    (130, 0)
    """
    if max_context is None or length - start <= max_context:
        return start
    return length - (max_context - max_context // 4)


def prompt_window(length: int, max_context: int | None) -> int:
    """Where the context window of a prompt of ``length`` tokens begins: a prompt longer than
    the model's context is cropped to its last ``max_context`` tokens.

    >>> prompt_window(300, 256), prompt_window(10, 256), prompt_window(300, None)
    (44, 0, 0)
    """
    return 0 if max_context is None else max(0, length - max_context)


@torch.inference_mode()
def generate_ids(
    model: LanguageModel, ids: Sequence[int], config: SampleConfig
) -> Iterator[torch.Tensor]:
    """Yield the next token of every sample, [num_samples], for ``max_new_tokens`` steps.

    The model reads the (cropped) prompt once, then one token per step with its state; when a
    finite context is full the window slides (:func:`slide_window`) and is re-read once.
    """
    config.validate()
    device = model_device(model)
    was_training = model.training
    model.eval()
    generator = torch.Generator(device=device)
    if config.seed is not None:
        generator.manual_seed(config.seed)
    else:
        generator.seed()
    context = model.max_context
    n = len(ids)
    history = torch.empty(
        config.num_samples, n + config.max_new_tokens, dtype=torch.long, device=device
    )
    history[:, :n] = torch.tensor(list(ids), dtype=torch.long, device=device)
    seen = None
    if config.repetition_penalty != 1.0:
        vocab = _vocab_size(model)
        seen = torch.zeros(config.num_samples, vocab, dtype=torch.bool, device=device)
        seen.scatter_(1, history[:, :n], True)
    try:
        start = prompt_window(n, context)
        logits, state = model(history[:, start:n])
        for step in range(config.max_new_tokens):
            next_ids = sample_next(process_logits(logits[:, -1], config, seen), config, generator)
            yield next_ids
            if step == config.max_new_tokens - 1:
                break
            history[:, n] = next_ids
            n += 1
            if seen is not None:
                seen.scatter_(1, next_ids[:, None], True)
            new_start = slide_window(start, n, context)
            if new_start != start:  # the window is full: slide it and rebuild the state
                start = new_start
                logits, state = model(history[:, start:n])
            else:
                logits, state = model(history[:, n - 1 : n], state)
    finally:
        model.train(was_training)


def _vocab_size(model: LanguageModel) -> int:
    return int(model.config.vocab_size)


class StopFilter:
    """Cuts a growing text right before the first stop string, holding back a tail that may
    still become one (shared by :func:`stream_samples` and the server).

    >>> f = StopFilter(["\\n\\n"]); f.feed("to be\\n"), f.feed("\\nor not"), f.stopped
    ('to be', '', True)
    """

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = list(stops)
        self.text = ""
        self.emitted = 0
        self.stopped = False

    def feed(self, piece: str) -> str:
        """Add decoded text; return what can safely be shown now."""
        if self.stopped:
            return ""
        self.text += piece
        cut = min((i for s in self.stops if (i := self.text.find(s)) >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            out = self.text[self.emitted : cut]
            self.text = self.text[:cut]
            self.emitted = cut
            return out
        hold = max((_overlap(self.text, s) for s in self.stops), default=0)
        safe = len(self.text) - hold
        out = self.text[self.emitted : safe] if safe > self.emitted else ""
        self.emitted = max(self.emitted, safe)
        return out

    def finish(self) -> str:
        """The held-back tail, once generation ends without a stop."""
        out = self.text[self.emitted :]
        self.emitted = len(self.text)
        return out


def _overlap(text: str, stop: str) -> int:
    """The length of the longest end of ``text`` that begins ``stop``."""
    for n in range(min(len(stop) - 1, len(text)), 0, -1):
        if text.endswith(stop[:n]):
            return n
    return 0


def stream_samples(
    model: LanguageModel,
    tokenizer: Tokenizer,
    prompt: str,
    config: SampleConfig,
    progress: bool = False,
) -> Iterator[tuple[int, str]]:
    """Yield ``(sample_index, text_piece)`` as tokens are generated. Pieces are whole
    characters (an incomplete UTF-8 sequence is held back) and never include a stop string.

    The pieces of a sample join to its completion: ``decode(prompt_ids + generated)`` less its
    first ``len(decode(prompt_ids))`` characters, so a word tokenizer's space between the
    prompt's last word and the first generated one is part of the completion."""
    from tqdm import tqdm

    ids = prompt_ids(tokenizer, prompt)
    decoders = [primed_decoder(tokenizer, ids) for _ in range(config.num_samples)]
    filters = [StopFilter(config.stop) for _ in range(config.num_samples)]
    with tqdm(
        total=config.max_new_tokens,
        desc="generating",
        unit="tok",
        disable=None if progress else True,
        leave=False,
    ) as bar:
        for next_ids in generate_ids(model, ids, config):
            bar.update(1)
            for i, token in enumerate(next_ids.tolist()):
                if filters[i].stopped:
                    continue
                piece = filters[i].feed(decoders[i].push(token))
                if piece:
                    yield i, piece
            if config.stop and all(f.stopped for f in filters):
                break
    for i, (decoder, stop_filter) in enumerate(zip(decoders, filters, strict=True)):
        if not stop_filter.stopped:
            piece = stop_filter.feed(decoder.flush())
            piece += stop_filter.finish()
            if piece:
                yield i, piece


def primed_decoder(tokenizer: Tokenizer, ids: Sequence[int]) -> StreamDecoder:
    """A stream decoder that has already read (and not returned) the prompt's tokens, so that
    the first generated token decodes in context."""
    decoder = tokenizer.stream_decoder()
    for token in ids:
        decoder.push(token)
    return decoder


def generate(
    model: LanguageModel,
    tokenizer: Tokenizer,
    prompt: str,
    config: SampleConfig | None = None,
    progress: bool = False,
) -> list[str]:
    """Generate ``config.num_samples`` completions of ``prompt``: each is what follows
    ``decode(prompt_ids)`` in ``decode(prompt_ids + generated_ids)`` (see :func:`stream_samples`),
    so ``prompt + completion`` is the decoded sequence whenever the tokenizer gives back the
    prompt exactly."""
    config = config or SampleConfig()
    texts = [""] * config.num_samples
    for i, piece in stream_samples(model, tokenizer, prompt, config, progress):
        texts[i] += piece
    return texts


def stream(
    model: LanguageModel,
    tokenizer: Tokenizer,
    prompt: str,
    config: SampleConfig | None = None,
) -> Iterator[str]:
    """Generate one completion, yielding text pieces as they come (always valid UTF-8)."""
    config = dataclasses.replace(config or SampleConfig(), num_samples=1)
    for _, piece in stream_samples(model, tokenizer, prompt, config):
        yield piece


@dataclasses.dataclass(frozen=True)
class ScoredContinuation:
    """log Pr{continuation | prompt} in nats, its probability, and each token's share."""

    continuation: str
    logprob: float
    prob: float
    tokens: list[tuple[str, float]]

    @property
    def logprob_per_token(self) -> float:
        """The mean log-probability per token."""
        return self.logprob / max(len(self.tokens), 1)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form printed by ``lmforge score --json``."""
        return {
            "continuation": self.continuation,
            "logprob": self.logprob,
            "prob": self.prob,
            "tokens": [{"token": t, "logprob": lp} for t, lp in self.tokens],
        }


def continuation_ids(
    tokenizer: Tokenizer, prompt: str, continuation: str, join: str = " "
) -> tuple[list[int], list[int]]:
    """(prompt tokens, continuation tokens) for scoring. ``join`` goes between the two when
    neither has whitespace at the junction. The continuation's tokens are those of the joined
    text after the prompt's, so tokenizers that merge across the junction score what they
    would really produce."""
    context = prompt_ids(tokenizer, prompt)
    needs_join = prompt and continuation and not (prompt[-1].isspace() or continuation[0].isspace())
    tail = (join if needs_join else "") + continuation
    if not prompt:
        return context, tokenizer.encode_continuation(tail)
    whole = tokenizer.encode(prompt + tail)
    if whole[: len(context)] == context:
        return context, whole[len(context) :]
    return context, tokenizer.encode_continuation(tail)


@torch.inference_mode()
def score(
    model: LanguageModel,
    tokenizer: Tokenizer,
    prompt: str,
    continuations: Sequence[str],
    join: str = " ",
) -> list[ScoredContinuation]:
    """log Pr{continuation | prompt} for each continuation, most likely first.

    >>> [s.continuation for s in score(model, tok, "It is great to hear that",
    ...                                ["potato am good", "you have succeeded"])]
    ['you have succeeded', 'potato am good']
    """
    device = model_device(model)
    was_training = model.training
    model.eval()
    results = []
    try:
        for continuation in continuations:
            context, target = continuation_ids(tokenizer, prompt, continuation, join)
            if not target:
                results.append(ScoredContinuation(continuation, 0.0, 1.0, []))
                continue
            ids = torch.tensor(context + target, dtype=torch.long, device=device)[None]
            logprobs = _target_logprobs(model, ids, len(context))
            pieces = [
                (tokenizer.id_to_token(t), float(lp))
                for t, lp in zip(target, logprobs.tolist(), strict=True)
            ]
            total = float(logprobs.sum())
            results.append(ScoredContinuation(continuation, total, math.exp(total), pieces))
    finally:
        model.train(was_training)
    return sorted(results, key=lambda s: s.logprob, reverse=True)


def _target_logprobs(model: LanguageModel, ids: torch.Tensor, start: int) -> torch.Tensor:
    """log p(ids[t] | ids[:t]) for t >= start; models with a finite context see at most
    their last ``max_context`` tokens for each prediction."""
    context = model.max_context
    n = ids.shape[1]
    if context is None or n <= context:
        logits, _ = model(ids[:, :-1])
        logprobs = F.log_softmax(logits[0].float(), dim=-1)
        targets = ids[0, 1:]
        picked = logprobs.gather(-1, targets[:, None]).squeeze(-1)
        return picked[start - 1 :]
    out = []
    for t in range(start, n):
        window = ids[:, max(0, t - context) : t]
        logits, _ = model(window)
        out.append(F.log_softmax(logits[0, -1].float(), dim=-1)[ids[0, t]])
    return torch.stack(out)
