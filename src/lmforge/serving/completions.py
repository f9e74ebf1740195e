"""``POST /v1/completions``: turn a checked request into engine sequences, and their tokens into
OpenAI completion objects (one response, or server-sent chunks).

Each choice decodes its tokens with a stream decoder primed with the prompt's tokens and cuts
its text at the first stop string (:class:`lmforge.generation.StopFilter`), exactly as
``lmforge sample`` does; at a stop the engine sequence is cancelled, freeing its slot.
Choice ``i`` of prompt ``p`` has index ``p * n + i`` and, when seeded, seed ``seed + i``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from lmforge.errors import ConfigError, LmforgeError
from lmforge.generation import SampleConfig, StopFilter, primed_decoder, prompt_ids
from lmforge.serving.engine import Request
from lmforge.serving.protocol import (
    APIError,
    CompletionRequest,
    LogprobsBuilder,
    choice,
    completion_id,
    completion_object,
    now,
    usage,
)


@dataclasses.dataclass
class Delta:
    """New text of one choice, its new logprob entries ``[lp_start, lp_end)``, and the finish
    reason once it is done."""

    text: str
    lp_start: int
    lp_end: int
    finish_reason: str | None = None


def sample_config(body: CompletionRequest, max_tokens_limit: int) -> SampleConfig:
    """The sampling settings of a request (the seed is per choice, set later)."""
    max_tokens = 16 if body.max_tokens is None else body.max_tokens
    if max_tokens > max_tokens_limit:
        raise APIError(
            400,
            f"max_tokens is {max_tokens}, above this server's limit of {max_tokens_limit}; "
            "ask for fewer tokens",
            param="max_tokens",
            code="context_length_exceeded",
        )
    config = SampleConfig(
        max_new_tokens=max_tokens,
        temperature=1.0 if body.temperature is None else body.temperature,
        top_k=body.top_k if body.top_k and body.top_k > 0 else None,
        top_p=body.top_p,
        repetition_penalty=1.0 if body.repetition_penalty is None else body.repetition_penalty,
        seed=body.seed,
    )
    try:
        config.validate()
    except ConfigError as exc:
        raise APIError(400, f"invalid request: {exc}", code="invalid_value") from None
    return config


class Choice:
    """One choice: submits its engine sequence, and turns the tokens into text and logprobs."""

    def __init__(
        self,
        served: Any,
        index: int,
        prompt: str,
        ids: list[int],
        config: SampleConfig,
        body: CompletionRequest,
        timing: Timing,
    ) -> None:
        self.served = served
        self.tokenizer = served.tokenizer
        self.index = index
        self.prompt = prompt
        self.ids = ids
        self.echo = bool(body.echo)
        self.want_logprobs = body.logprobs is not None
        self.decoder = primed_decoder(self.tokenizer, ids)
        self.stop_filter = StopFilter(body.stops)
        self.logprobs = LogprobsBuilder()
        self.generated = 0
        self.timing = timing
        self.last_token_at: float | None = None
        request = Request(
            prompt_ids=ids,
            sample=config,
            top_logprobs=body.logprobs or 0,
            prompt_logprobs=self.echo and self.want_logprobs,
            logprobs=self.want_logprobs,
        )
        self.needs_engine = config.max_new_tokens > 0 or request.prompt_logprobs
        self.sequence = served.engine.submit(request) if self.needs_engine else None

    def cancel(self) -> None:
        if self.sequence is not None:
            self.sequence.cancel()

    async def deltas(self) -> AsyncIterator[Delta]:
        """The choice's text as it comes: the echoed prompt first (when asked), then one
        delta per generated token (or one for the tokens that arrived while the reader was
        busy: a reader that falls behind catches up in one piece), then the tail held back
        by the stop filter."""
        echoed = False
        if self.sequence is not None:
            while tokens := await self.sequence.next_tokens():
                if not echoed:
                    echoed = True
                    yield self._echo()
                self._time_tokens(len(tokens))
                start = len(self.logprobs)
                texts = []
                for info in tokens:
                    self.generated += 1
                    texts.append(self._token(info))
                    if self.stop_filter.stopped:
                        self.sequence.cancel()
                        yield Delta("".join(texts), start, len(self.logprobs), "stop")
                        return
                yield Delta("".join(texts), start, len(self.logprobs))
        if not echoed:
            yield self._echo()
        start = len(self.logprobs)
        tail = self.stop_filter.feed(self.decoder.flush())
        finish = "stop" if self.stop_filter.stopped else "length"
        tail += self.stop_filter.finish()
        yield Delta(tail, start, start, finish)

    def _time_tokens(self, count: int) -> None:
        """Note ``count`` tokens arriving now: the first one's wait, then a gap per token
        (tokens that arrive together share the gap since the previous arrival)."""
        at = previous = time.perf_counter()
        if self.last_token_at is None:
            self.timing.first_token(at - self.timing.received_at)
            count -= 1
        else:
            previous = self.last_token_at
        for _ in range(count):
            self.timing.between_tokens((at - previous) / count)
        self.last_token_at = at

    def _echo(self) -> Delta:
        if not self.echo:
            return Delta("", 0, 0)
        if self.want_logprobs:
            infos = (self.sequence.prompt_logprobs if self.sequence is not None else None) or []
            decoder = self.tokenizer.stream_decoder()
            for i, token in enumerate(self.ids):
                text = decoder.push(token)
                info = infos[i] if i < len(infos) else None
                if info is None:
                    self.logprobs.add(text, None, None)
                else:
                    self.logprobs.add(text, info.logprob, self._top(info))
            self.logprobs.offset = len(self.prompt)
        return Delta(self.prompt, 0, len(self.logprobs))

    def _token(self, info: Any) -> str:
        """The visible text one generated token adds (its logprobs go to the builder)."""
        piece = self.decoder.push(info.token)
        before = len(self.stop_filter.text)
        visible = self.stop_filter.feed(piece)
        # A token that begins after a stop string is not part of the answer.
        if self.want_logprobs and (
            not self.stop_filter.stopped or before < len(self.stop_filter.text)
        ):
            self.logprobs.add(piece, info.logprob, self._top(info))
        return visible

    def _top(self, info: Any) -> dict[str, float]:
        return {self.served.token_text(token): logprob for token, logprob in info.top}


@dataclasses.dataclass
class Timing:
    """Where a request's token timings go (the metrics' histograms)."""

    received_at: float
    first_token: Callable[[float], None]
    between_tokens: Callable[[float], None]


def make_choices(
    served: Any, body: CompletionRequest, settings: Any, timing: Timing
) -> list[Choice]:
    """Check the prompts and submit ``n`` sequences per prompt; on any failure the sequences
    already submitted are cancelled."""
    config = sample_config(body, settings.max_tokens_limit)
    n = body.n or 1
    prompts = body.prompts
    if len(prompts) * n > settings.max_queue:
        raise APIError(
            400,
            f"{len(prompts)} prompt(s) × n={n} is {len(prompts) * n} sequences, above this "
            f"server's queue of {settings.max_queue}; send fewer prompts or a smaller n",
            param="n",
            code="invalid_value",
        )
    encoded = []
    for p_index, text in enumerate(prompts):
        where = "prompt" if isinstance(body.prompt, str) else f"prompt.{p_index}"
        try:
            ids = prompt_ids(served.tokenizer, text)
        except LmforgeError as exc:
            raise APIError(400, str(exc), param=where, code="invalid_value") from None
        limit = served.max_prompt_tokens
        if len(ids) > limit:
            raise APIError(
                400,
                f"the prompt is {len(ids)} tokens, more than model '{served.name}' reads "
                f"({limit}); shorten the prompt",
                param=where,
                code="context_length_exceeded",
            )
        encoded.append(ids)
    choices: list[Choice] = []
    try:
        for p_index, (text, ids) in enumerate(zip(prompts, encoded, strict=True)):
            for i in range(n):
                seed = None if config.seed is None else config.seed + i
                sample = dataclasses.replace(config, seed=seed)
                choices.append(Choice(served, p_index * n + i, text, ids, sample, body, timing))
    except BaseException:  # e.g. QueueFull (429): withdraw the sequences already queued
        for c in choices:
            c.cancel()
        raise
    return choices


async def complete(
    body: CompletionRequest, choices: list[Choice], prompt_tokens: int
) -> dict[str, Any]:
    """The whole non-streamed completion object."""

    async def collect(c: Choice) -> dict[str, Any]:
        text = ""
        finish = None
        async for delta in c.deltas():
            text += delta.text
            finish = delta.finish_reason or finish
        logprobs = c.logprobs.build() if c.want_logprobs else None
        return choice(c.index, text, logprobs, finish)

    try:
        results = await asyncio.gather(*(collect(c) for c in choices))
    finally:
        for c in choices:
            c.cancel()
    generated = sum(c.generated for c in choices)
    return completion_object(
        completion_id(), now(), body.model, list(results), usage(prompt_tokens, generated)
    )


async def stream(
    body: CompletionRequest, choices: list[Choice], prompt_tokens: int
) -> AsyncIterator[str]:
    """Server-sent events: one completion chunk per piece of a choice, an optional usage
    chunk, then ``data: [DONE]``. Leaving early (the client went away) cancels every
    sequence."""
    chunks = ChunkFormat(completion_id(), now(), body.model)
    try:
        async with contextlib.aclosing(_merged_deltas(choices)) as deltas:
            async for c, delta in deltas:
                if isinstance(delta, BaseException):
                    error = APIError(500, f"generation failed: {delta}", code="engine_error")
                    yield _event(error.body())
                    return
                if delta.text or delta.finish_reason or delta.lp_start != delta.lp_end:
                    yield chunks.delta(c, delta)
        if body.stream_options is not None and body.stream_options.include_usage:
            generated = sum(c.generated for c in choices)
            yield chunks.usage(usage(prompt_tokens, generated))
        yield "data: [DONE]\n\n"
    finally:
        for c in choices:
            c.cancel()


async def _merged_deltas(
    choices: list[Choice],
) -> AsyncIterator[tuple[Choice, Delta | BaseException]]:
    """Every choice's deltas as they come, interleaved; an engine error of a choice comes as
    ``(choice, exception)`` and ends the iteration. One choice is read directly."""
    if len(choices) == 1:
        (c,) = choices
        try:
            async for delta in c.deltas():
                yield c, delta
        except Exception as exc:  # an engine error fails this request only
            yield c, exc
        return
    queue: asyncio.Queue[tuple[Choice, Delta | BaseException] | None] = asyncio.Queue()

    async def pump(c: Choice) -> None:
        try:
            async for delta in c.deltas():
                await queue.put((c, delta))
        except Exception as exc:
            await queue.put((c, exc))
        finally:
            await queue.put(None)

    tasks = [asyncio.ensure_future(pump(c)) for c in choices]
    try:
        running = len(tasks)
        while running:
            item = await queue.get()
            if item is None:
                running -= 1
                continue
            yield item
            if isinstance(item[1], BaseException):
                return
    finally:
        for task in tasks:
            task.cancel()


class ChunkFormat:
    """The server-sent events of one streamed completion. A chunk of plain text (no logprobs,
    not the last) is the common one, one per token: it is written into a template made once
    (the same bytes ``json.dumps`` gives), so a token costs one string's encoding.

    >>> ChunkFormat("cmpl-1", 0, "m").choice(0, "hi", None, None)[:58]
    'data: {"id": "cmpl-1", "object": "text_completion", "creat'
    """

    TEXT = "\x00text\x00"  # a placeholder no JSON text of the request can contain

    def __init__(self, request_id: str, created: int, model: str) -> None:
        self.request_id, self.created, self.model = request_id, created, model
        self.templates: dict[int, tuple[str, str]] = {}

    def delta(self, c: Choice, delta: Delta) -> str:
        """The event of a choice's delta."""
        logprobs = c.logprobs.build(delta.lp_start, delta.lp_end) if c.want_logprobs else None
        return self.choice(c.index, delta.text, logprobs, delta.finish_reason)

    def choice(
        self, index: int, text: str, logprobs: dict[str, Any] | None, finish: str | None
    ) -> str:
        """The event of one choice's new ``text``."""
        if logprobs is not None or finish is not None:
            return self._event([choice(index, text, logprobs, finish)])
        template = self.templates.get(index)
        if template is None:
            whole = self._event([choice(index, self.TEXT, None, None)])
            head, _, tail = whole.partition(_json(self.TEXT))
            template = self.templates[index] = (head, tail)
        return template[0] + _json(text) + template[1]

    def usage(self, counts: dict[str, int]) -> str:
        """The last event when the usage was asked for: no choices, the token counts."""
        return self._event([], counts)

    def _event(self, choices: list[dict[str, Any]], counts: dict[str, int] | None = None) -> str:
        payload = completion_object(self.request_id, self.created, self.model, choices, counts)
        return _event(payload)


def _json(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def _event(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"
