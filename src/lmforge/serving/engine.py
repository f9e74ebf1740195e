"""Continuous batching: one engine thread per served model decodes every active sequence
together, one token per step.

Each loop of the engine thread

1. admits waiting requests while fewer than ``max_batch`` sequences are active, and reads
   their (cropped) prompts and the slid windows of step 4 with the model's ordinary forward
   from an empty state, as :func:`lmforge.generation.generate_ids` does: windows of similar
   lengths together, in one padded call (:func:`read_groups`); a lone window, or a prompt
   whose logprobs are wanted, B=1. Each state joins the batch as a new row
   (:mod:`lmforge.serving.batching`);
2. runs ONE batched decode step for the rows already in the batch;
3. samples each row's next token with the request's own :class:`SampleConfig` and
   ``torch.Generator`` (:func:`generation.process_logits`, :func:`generation.sample_next`), and
   hands the tokens to the asyncio side with ``loop.call_soon_threadsafe`` (an event loop is
   woken at most once per ``delivery_interval``, 10 ms, for tokens: a fast step's tokens reach
   it a few at a time, so the loop's per-wake work, which holds the GIL the engine needs,
   is paid per chunk rather than per token; a sequence's first token and its end are handed
   over at once);
4. drops finished and cancelled rows at once; a Transformer row whose window is full leaves
   the batch to re-read its slid window (:func:`generation.slide_window`) in the next step's
   reads, then joins again.

It sleeps on a condition variable when there is nothing to do. A seeded request therefore
draws the same tokens as ``lmforge sample --seed S``, alone or in a busy batch.

>>> engine = Engine(model, max_batch=32); engine.start()
>>> seq = engine.submit(Request(prompt_ids(tokenizer, "ROMEO:"), SampleConfig(max_new_tokens=20)))
>>> async for info in seq:            # TokenInfo(token=..., logprob=..., top=())
...     print(tokenizer.decode([info.token]), end="")
>>> engine.stop()
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import math
import statistics
import threading
import time
import weakref
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import torch
import torch.nn.functional as F

from lmforge.device import model_device
from lmforge.errors import LmforgeError
from lmforge.generation import (
    SampleConfig,
    process_logits,
    prompt_window,
    sample_next,
    slide_window,
)
from lmforge.models.base import LanguageModel
from lmforge.serving import threads
from lmforge.serving.batching import Batch, batch_for
from lmforge.serving.sampling import (
    INVALID_DRAW,
    TokenInfo,
    draw_rows,
    grouped_process_logits,
    sampling_groups,
    token_infos,
)

T = TypeVar("T")
log = logging.getLogger("lmforge.serve")
_END = object()  # the end of a sequence's token stream
PHASES = ("read", "decode", "sample")  # where the engine thread's time goes (Engine.seconds)
_ids = itertools.count(1)


class QueueFull(LmforgeError):
    """``max_queue`` requests are already waiting for a slot: try again later."""


class EngineStopped(LmforgeError):
    """The engine is stopping or stopped and takes no more work."""


@dataclasses.dataclass(frozen=True)
class Request:
    """One sequence to generate: prompt tokens (cropped to the model's last ``max_context``,
    as :func:`generation.generate_ids` does), how to sample (``stop`` and ``num_samples`` are
    ignored: stops are text-level, one request is one sequence), how many alternatives to
    report per token, whether to report the prompt's logprobs too, and whether the generated
    tokens' own logprobs are wanted (a request that does not read them saves a softmax per
    step)."""

    prompt_ids: list[int]
    sample: SampleConfig
    top_logprobs: int = 0
    prompt_logprobs: bool = False
    logprobs: bool = True  # False: TokenInfo.logprob is NaN (unless top_logprobs > 0)


class Sequence:
    """The handle :meth:`Engine.submit` returns: iterate it (``async for``) for the generated
    :class:`TokenInfo` as they come; it ends when the sequence finishes and re-raises an error
    of the model step it was in."""

    def __init__(self, request: Request, engine: Engine, loop: asyncio.AbstractEventLoop) -> None:
        self.id = next(_ids)
        self.request = request
        self.prompt_logprobs: list[TokenInfo | None] | None = None
        self.finish_reason: str | None = None
        self._engine = engine
        self._loop = loop
        self._items: deque[Any] = deque()  # tokens, then _END or an exception, which stay
        self._waiter: asyncio.Future[None] | None = None
        self._cancelled = False
        self._started = False  # engine thread: whether an item of it was handed over yet

    def cancel(self) -> None:
        """Stop generating (thread-safe, idempotent): the slot is freed before the engine's
        next decode step, and the iteration ends."""
        self._engine._cancel(self)

    @property
    def cancelled(self) -> bool:
        """Whether :meth:`cancel` was called."""
        return self._cancelled

    def __aiter__(self) -> AsyncIterator[TokenInfo]:
        return self

    async def __anext__(self) -> TokenInfo:
        if not self._items:
            await self._wait()
        if _is_token(self._items[0]):
            return self._items.popleft()
        return self._last()

    async def next_tokens(self) -> list[TokenInfo]:
        """Every token that has arrived and was not read yet, at least one (a reader that
        keeps up gets them one by one, a slow one in a batch); ``[]`` once the sequence
        ended."""
        if not self._items:
            await self._wait()
        items = self._items
        tokens = []
        while items and _is_token(items[0]):
            tokens.append(items.popleft())
        if tokens:
            return tokens
        with contextlib.suppress(StopAsyncIteration):
            self._last()
        return []

    def _last(self) -> Any:
        """At the end of the stream (which stays there, so a later read ends or fails the
        same way): stop, or raise the step's error."""
        item = self._items[0]
        if item is _END:
            raise StopAsyncIteration
        raise item

    async def _wait(self) -> None:
        self._waiter = self._loop.create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    def _put(self, items: list[Any]) -> None:
        """Runs on the sequence's event loop."""
        self._items.extend(items)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


def _is_token(item: Any) -> bool:
    return item is not _END and not isinstance(item, BaseException)


def _urgent(batch: list[tuple[Sequence, list[Any]]]) -> bool:
    """Whether items must reach their loop now: a sequence's first token (its time to first
    token), an end or an error. Runs on the engine thread, which marks each sequence once."""
    urgent = False
    for seq, items in batch:
        if not seq._started:
            seq._started = urgent = True
        elif not urgent and not all(_is_token(item) for item in items):
            urgent = True
    return urgent


# what a step hands each event loop: its sequences and their new items
Outbox = dict[asyncio.AbstractEventLoop, list[tuple[Sequence, list[Any]]]]


class _Slot:
    """Engine-thread bookkeeping of one active sequence."""

    def __init__(
        self, seq: Sequence, device: torch.device, vocab_size: int, max_context: int | None
    ) -> None:
        config = seq.request.sample
        self.seq = seq
        self.config = config
        self.history = list(seq.request.prompt_ids)
        self.start = prompt_window(len(self.history), max_context)  # the window: history[start:]
        self.generated = 0
        self.generator = torch.Generator(device=device)
        if config.seed is not None:
            self.generator.manual_seed(config.seed)
        else:
            self.generator.seed()
        self.greedy = config.temperature == 0 and config.repetition_penalty == 1.0
        request = seq.request
        self.wants_logprobs = request.logprobs or request.top_logprobs > 0
        self.seen: torch.Tensor | None = None
        if config.repetition_penalty != 1.0:
            self.seen = torch.zeros(1, vocab_size, dtype=torch.bool, device=device)
            self.seen[0, torch.tensor(self.history, device=device)] = True


class Engine:
    """The continuous-batching engine of one model (see the module docstring)."""

    def __init__(
        self,
        model: LanguageModel,
        *,
        max_batch: int = 32,
        max_queue: int = 256,
        name: str = "",
        delivery_interval: float = 0.01,
        threads_alone: int | str | None = None,
    ) -> None:
        if not (threads_alone in (None, "auto") or isinstance(threads_alone, int)):
            raise LmforgeError(f"threads_alone must be a count, 'auto' or None: {threads_alone!r}")
        if max_batch < 1 or max_queue < 0:
            raise LmforgeError(
                f"max_batch must be at least 1 and max_queue 0 or more, got {max_batch} and "
                f"{max_queue}"
            )
        self.model = model
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.name = name
        self.delivery_interval = delivery_interval
        self.threads_alone = threads_alone
        # torch's thread count is per thread, and a new thread starts from the count last set
        # anywhere: the batched steps take the count of the thread that made the engine
        self._batched_threads = torch.get_num_threads()
        self._threads: tuple[int, int] | None = None  # (batched, alone), set by the thread
        self._trial: threads.ThreadTrial | None = None
        self.on_step: Callable[[int, int], None] | None = None
        self._device = model_device(model)
        self._vocab_size = int(model.config.vocab_size)
        self._cond = threading.Condition()
        self._waiting: deque[Sequence] = deque()
        self._calls: list[tuple[Callable[[], Any], asyncio.AbstractEventLoop, asyncio.Future]] = []
        self._rows: list[_Slot] = []  # rows of the batch, in order
        self._rejoining: list[_Slot] = []  # slid windows to re-read before joining again
        self._batch: Batch = batch_for(model)
        self._thread: threading.Thread | None = None
        self._closing = False
        self._abort = False
        self._steps = 0
        self._seconds = dict.fromkeys(PHASES, 0.0)
        self._read_tokens = 0
        self._mail_lock = threading.Lock()
        self._mail: Outbox = {}  # items each loop has not read yet
        self._woken: set[asyncio.AbstractEventLoop] = set()  # loops with a read scheduled
        self._last_wake: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, float] = (
            weakref.WeakKeyDictionary()
        )

    # -- the asyncio side -------------------------------------------------------------------

    @property
    def active(self) -> int:
        """Sequences in the batch now."""
        return len(self._rows) + len(self._rejoining)

    @property
    def queued(self) -> int:
        """Sequences waiting for a slot."""
        return len(self._waiting)

    @property
    def steps(self) -> int:
        """Engine steps (a batched decode and/or prompt reads) run so far."""
        return self._steps

    @property
    def seconds(self) -> dict[str, float]:
        """Engine-thread seconds spent so far in each of :data:`PHASES`: ``read`` (prompts and
        slid windows), ``decode`` (the batched steps) and ``sample`` (drawing the
        rows' tokens and handing them over). Where a busy engine's time goes: at many
        sequences, a model whose window slides often spends most of it reading. (On a GPU a
        phase's kernels may still run in the next one: the host waits for them when it reads
        the tokens back.)"""
        return dict(self._seconds)

    @property
    def threads(self) -> tuple[int, int] | None:
        """Torch threads for batched steps and for one-sequence steps, once the engine thread
        has started (with ``threads_alone="auto"`` the second is the batched count until its
        trial has chosen)."""
        return self._threads

    @property
    def read_tokens(self) -> int:
        """Tokens read so far by prompt and window reads (a slid window's tokens again each
        time it is re-read)."""
        return self._read_tokens

    def start(self) -> None:
        """Start the engine thread (generation never runs on the event loop)."""
        if self._thread is not None:
            return
        self.model.eval()
        self._thread = threading.Thread(
            target=self._run, name=f"lmforge-engine-{self.name}", daemon=True
        )
        self._thread.start()

    def submit(self, request: Request) -> Sequence:
        """Queue ``request``; call from the event loop thread. Raises :class:`QueueFull` when
        ``max_queue`` requests are already waiting."""
        request.sample.validate()
        if not request.prompt_ids:
            raise LmforgeError("the prompt has no tokens; give at least one")
        seq = Sequence(request, self, asyncio.get_running_loop())
        with self._cond:
            if self._closing:
                raise EngineStopped(f"the engine {self.name!r} is stopping; retry elsewhere")
            if len(self._waiting) >= self.max_queue:
                raise QueueFull(
                    f"{len(self._waiting)} requests are already waiting for model "
                    f"{self.name!r}; retry later"
                )
            self._waiting.append(seq)
            self._cond.notify()
        return seq

    async def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the engine thread between steps and return its result."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        with self._cond:
            if self._thread is None or not self._thread.is_alive():
                raise EngineStopped(f"the engine {self.name!r} is not running")
            self._calls.append((fn, loop, future))
            self._cond.notify()
        return await future

    def stop(self, timeout: float = 10.0) -> None:
        """Take no more work; let running and queued sequences finish for up to ``timeout``
        seconds, cancel the rest, and join the engine thread."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
            with self._cond:
                self._abort = True
                self._cond.notify()
            thread.join()
        with self._cond:  # never started, or it left work behind: end every stream
            leftovers = [*self._waiting, *(s.seq for s in self._rows + self._rejoining)]
            self._waiting.clear()
            self._rows, self._rejoining = [], []
        for seq in leftovers:
            self._finish(seq, "cancelled")
            self._deliver({seq._loop: [(seq, [_END])]})

    def _cancel(self, seq: Sequence) -> None:
        with self._cond:
            if seq.finish_reason is None:
                seq.finish_reason = "cancelled"
            seq._cancelled = True
            self._cond.notify()

    # -- the engine thread ------------------------------------------------------------------

    def _run(self) -> None:
        with torch.inference_mode():
            self._start_threads()
            while True:
                with self._cond:
                    while (
                        not (self._waiting or self._rows or self._rejoining or self._calls)
                        and not self._closing
                    ):
                        self._cond.wait()
                    if self._abort or (
                        self._closing and not (self._waiting or self._rows or self._rejoining)
                    ):
                        break  # calls still queued fail below
                    calls, self._calls = self._calls, []
                for fn, loop, future in calls:
                    _run_call(fn, loop, future)
                try:
                    self._step()
                except Exception as exc:  # a bug of ours must not wedge the server
                    self._fail_all(exc)
        with self._cond:
            calls, self._calls = self._calls, []
        for _, loop, future in calls:
            loop.call_soon_threadsafe(_fail_future, future, EngineStopped("the engine stopped"))

    def _admit(self) -> list[Sequence]:
        """Waiting sequences that get a slot now (cancelled ones are ended)."""
        admitted: list[Sequence] = []
        ended: list[Sequence] = []
        with self._cond:
            while self._waiting and self.active + len(admitted) < self.max_batch:
                seq = self._waiting.popleft()
                if seq._cancelled:
                    ended.append(seq)
                else:
                    admitted.append(seq)
        for seq in ended:
            self._deliver({seq._loop: [(seq, [_END])]})
        return admitted

    def _step(self) -> None:
        """One engine step: decode the batch, read new (and slid) prompts, sample, deliver,
        drop finished rows."""
        outbox: Outbox = {}
        self._drop_cancelled(outbox)
        trial_count = self._use_threads()
        parts: list[torch.Tensor] = []
        clock = started = time.perf_counter()
        if self._rows:
            tokens = torch.tensor([s.history[-1] for s in self._rows], device=self._device)
            try:
                parts.append(self._batch.step(tokens).float())
            except Exception as exc:  # a failing step fails its sequences, not the engine
                for slot in self._rows:
                    self._fail(slot, exc, outbox)
                self._rows, self._batch = [], batch_for(self.model)
        clock = self._account("decode", clock)
        joining: list[_Slot] = self._rejoining
        self._rejoining = []
        for seq in self._admit():
            try:
                joining.append(_Slot(seq, self._device, self._vocab_size, self.model.max_context))
            except Exception as exc:
                self._fail_sequence(seq, exc, outbox)
        for group in read_groups(joining):
            for slot, logits in self._read(group, outbox):
                if slot.config.max_new_tokens == 0:
                    self._end(slot, "length", outbox)
                    continue
                self._rows.append(slot)
                parts.append(logits)
        clock = self._account("read", clock)
        if parts:
            logits = parts[0] if len(parts) == 1 else torch.cat(parts)
            self._sample_and_deliver(logits, outbox)
        self._drop_cancelled(outbox)
        self._steps += 1
        self._deliver(outbox, flush=not (self._rows or self._rejoining))
        self._account("sample", clock)
        if trial_count is not None:
            self._end_trial_step(trial_count, time.perf_counter() - started)
        if self.on_step is not None:
            with contextlib.suppress(Exception):  # a metrics hook must not stop generation
                self.on_step(self.active, self.queued)

    def _start_threads(self) -> None:
        """On the engine thread: torch's thread count for batched steps (the count of the
        thread that made the engine), and how one-sequence steps get theirs
        (:attr:`threads_alone`: a count; ``"auto"``: learnt in service by a
        :class:`threads.ThreadTrial` on a CPU, else the batched count; None: the batched)."""
        batched = self._batched_threads
        alone = self.threads_alone
        if alone == "auto":
            if self._device.type == "cpu":
                candidates = threads.candidate_threads(threads.machine_cores(), batched)
                self._trial = threads.ThreadTrial(candidates)
            alone = None
        self._threads = (batched, int(alone or batched))
        torch.set_num_threads(batched)

    def _use_threads(self) -> int | None:
        """Set this step's torch threads: the batched count, or with one sequence to step
        (and none waiting) the one-sequence count (the trial's). Returns the count when the
        trial should time the step (one sequence decoding on its own), else None."""
        if self._threads is None:
            return None
        batched, alone = self._threads
        single = self.active + len(self._waiting) <= 1
        trial = self._trial if single and self._trial is not None else None
        timed = trial is not None and len(self._rows) == 1
        count = (trial.count() if trial is not None else alone) if single else batched
        if count != torch.get_num_threads():
            torch.set_num_threads(count)
        return count if timed else None

    def _end_trial_step(self, count: int, seconds: float) -> None:
        """Give the trial a one-sequence step; log its choice when it makes a new one."""
        assert self._trial is not None and self._threads is not None
        chosen = self._trial.record(count, seconds)
        if chosen is None:
            return
        batched, before = self._threads
        self._threads = (batched, chosen)
        if self._trial.trials == 1 or chosen != before:
            log.info(
                "model %s: %d torch thread(s) for batched steps, %d for one sequence "
                "(timed on one-sequence steps: %s ms a step)",
                self.name,
                batched,
                chosen,
                ", ".join(
                    f"{c} thread(s) {1000 * statistics.median(t):.2f}"
                    for c, t in self._trial.seconds.items()
                ),
            )

    def _account(self, phase: str, since: float) -> float:
        """Add the time since ``since`` to ``phase``; return now."""
        now = time.perf_counter()
        self._seconds[phase] += now - since
        return now

    def _deliver(self, outbox: Outbox, flush: bool = False) -> None:
        """Hand each loop its sequences' items. A loop is woken once for whatever piles up
        until it reads its mail, and for plain tokens at most once per
        ``delivery_interval``: a first token, an end or an error wakes it at once, and so
        does ``flush`` (the engine is about to wait). Held tokens go with a later step's."""
        now = time.monotonic()
        urgent = {loop for loop, batch in outbox.items() if _urgent(batch)}
        wake = []
        with self._mail_lock:
            for loop, batch in outbox.items():
                self._mail.setdefault(loop, []).extend(batch)
            for loop in self._mail:
                if loop in self._woken:
                    continue
                since = now - self._last_wake.get(loop, -math.inf)
                if flush or loop in urgent or since >= self.delivery_interval:
                    self._woken.add(loop)
                    self._last_wake[loop] = now
                    wake.append(loop)
        for loop in wake:
            try:
                loop.call_soon_threadsafe(self._read_mail, loop)
            except RuntimeError:  # a closed loop: nobody is listening any more
                with self._mail_lock:
                    self._mail.pop(loop, None)
                    self._woken.discard(loop)

    def _read_mail(self, loop: asyncio.AbstractEventLoop) -> None:
        """Runs on ``loop``: put the items delivered to it into their sequences."""
        with self._mail_lock:
            batch = self._mail.pop(loop, [])
            self._woken.discard(loop)
        for seq, items in batch:
            seq._put(items)

    def _fail_all(self, exc: Exception) -> None:
        """Fail every active sequence and start again from an empty batch."""
        outbox: Outbox = {}
        for slot in self._rows + self._rejoining:
            self._fail(slot, exc, outbox)
        self._rows, self._rejoining, self._batch = [], [], batch_for(self.model)
        self._deliver(outbox)

    def _read(self, group: list[_Slot], outbox: Outbox) -> list[tuple[_Slot, torch.Tensor]]:
        """Read the group's windows together (one alone: :meth:`_read_window`) and join their
        states to the batch; each slot with its next-token logits [1, I]. If the group's
        read fails, each window is read alone, so that only a failing one fails."""
        if len(group) > 1:
            windows = [slot.history[slot.start :] for slot in group]
            try:
                logits = self._batch.read(windows)
            except Exception:  # read alone below, where the failing window is told why
                pass
            else:
                self._read_tokens += sum(len(w) for w in windows)
                return [(slot, logits[i : i + 1]) for i, slot in enumerate(group)]
        read = []
        for slot in group:
            try:
                read.append((slot, self._read_window(slot)))
            except Exception as exc:
                self._fail(slot, exc, outbox)
        return read

    def _read_window(self, slot: _Slot) -> torch.Tensor:
        """Read a new sequence's (cropped) prompt, or a slid window, alone; join its state to
        the batch; return its next-token logits [1, I] (float32). A new sequence that asks
        for them gets its prompt logprobs here."""
        window = torch.tensor(slot.history[slot.start :], device=self._device)[None]
        logits, state = self.model(window)
        self._read_tokens += window.shape[1]
        logits = logits[0].float()
        if slot.generated == 0 and slot.seq.request.prompt_logprobs:
            slot.seq.prompt_logprobs = self._prompt_logprobs(slot, logits)
        if slot.config.max_new_tokens > 0:
            self._batch.join(state)
        return logits[-1:]

    def _prompt_logprobs(self, slot: _Slot, logits: torch.Tensor) -> list[TokenInfo | None]:
        """log p(prompt[t] | prompt[:t]) for every prompt token; each prediction sees at most
        the model's last ``max_context`` tokens, as :func:`generation.score` does."""
        ids = slot.history
        if slot.start == 0:
            predicting = logits[:-1]  # row t-1 predicts token t
        else:  # a cropped prompt: the early tokens need windows of their own
            context = self.model.max_context
            rows = []
            for t in range(1, len(ids)):
                window = torch.tensor(ids[max(0, t - context) : t], device=self._device)[None]
                rows.append(self.model(window)[0][0, -1].float())
            predicting = torch.stack(rows)
        if predicting.shape[0] == 0:
            return [None]
        logprobs = F.log_softmax(predicting, dim=-1)
        targets = torch.tensor(ids[1:], device=logprobs.device)
        infos = token_infos(logprobs, targets, [slot.seq.request.top_logprobs] * len(targets))
        return [None, *infos]

    def _sample_and_deliver(self, logits: torch.Tensor, outbox: Outbox) -> None:
        """Sample row i's next token from ``logits[i]`` [B, I], queue it for delivery, and let
        finished rows leave; rows whose window is full leave to re-read it."""
        rows = self._rows
        tokens, failed = self._sample(logits, outbox)
        token_list = tokens.tolist()
        if any(s.wants_logprobs for s in rows):
            logprobs = F.log_softmax(logits, dim=-1)
            infos = token_infos(logprobs, tokens, [s.seq.request.top_logprobs for s in rows])
        else:
            infos = [TokenInfo(t, math.nan) for t in token_list]
        kept: list[int] = []
        context = self.model.max_context
        for i, (slot, info) in enumerate(zip(rows, infos, strict=True)):
            if i in failed:
                continue
            if slot.seq._cancelled:
                self._end(slot, "cancelled", outbox)
                continue
            slot.generated += 1
            slot.history.append(info.token)
            if slot.seen is not None:
                slot.seen[0, info.token] = True
            outbox.setdefault(slot.seq._loop, []).append((slot.seq, [info]))
            if slot.generated >= slot.config.max_new_tokens:
                self._end(slot, "length", outbox)
                continue
            new_start = slide_window(slot.start, len(slot.history), context)
            if new_start != slot.start:
                slot.start = new_start
                self._rejoining.append(slot)
            else:
                kept.append(i)
        self._keep(kept)

    def _sample(self, logits: torch.Tensor, outbox: Outbox) -> tuple[torch.Tensor, set[int]]:
        """Each row's next token [B] drawn with its own settings and generator, and the rows
        whose draw failed (they are failed here)."""
        rows = self._rows
        if len(rows) == 1:  # the lone row: exactly generate_ids's two calls
            slot = rows[0]
            try:
                processed = process_logits(logits, slot.config, slot.seen)
                return sample_next(processed, slot.config, slot.generator), set()
            except RuntimeError as exc:  # e.g. NaN logits
                self._fail(slot, exc, outbox)
                return logits.argmax(dim=-1), {0}
        tokens = logits.argmax(dim=-1)  # right for greedy rows, replaced for the others
        failed: set[int] = set()
        drawn: dict[int, torch.Tensor] = {}
        for group in sampling_groups(rows):
            # rows that filter alike are processed together and drawn in one go (always at a
            # temperature > 0: see sampling_groups), each with its own generator
            processed = grouped_process_logits(logits, group, rows)
            if processed is not None:
                generators = [rows[i].generator for i in group]
                group_tokens, valid = draw_rows(processed.softmax(dim=-1), generators)
                for j, i in enumerate(group):
                    if valid[j]:
                        drawn[i] = group_tokens[j : j + 1]
                    else:  # NaN logits, say: this row fails, the others go on
                        self._fail(rows[i], LmforgeError(INVALID_DRAW), outbox)
                        failed.add(i)
                continue
            for i in group:
                slot = rows[i]
                try:
                    row = process_logits(logits[i : i + 1], slot.config, slot.seen)
                    drawn[i] = sample_next(row, slot.config, slot.generator)
                except RuntimeError as exc:  # e.g. NaN logits: this row fails, others go on
                    self._fail(slot, exc, outbox)
                    failed.add(i)
        if drawn:
            index = torch.tensor(list(drawn), device=tokens.device)
            tokens[index] = torch.cat(list(drawn.values()))
        return tokens, failed

    def _drop_cancelled(self, outbox: Outbox) -> None:
        """Free the slots of cancelled sequences, and end cancelled waiting ones."""
        if any(s.seq._cancelled for s in self._rows):
            kept = []
            for i, slot in enumerate(self._rows):
                if slot.seq._cancelled:
                    self._end(slot, "cancelled", outbox)
                else:
                    kept.append(i)
            self._keep(kept)
        for slot in [s for s in self._rejoining if s.seq._cancelled]:
            self._rejoining.remove(slot)
            self._end(slot, "cancelled", outbox)
        if self._abort:
            for slot in self._rows + self._rejoining:
                self._end(slot, "cancelled", outbox)
            self._keep([])
            self._rejoining = []

    def _keep(self, kept: list[int]) -> None:
        """Keep the rows ``kept``; the last survivors move into the holes, so the batch copies
        a few rows rather than shifting all of them."""
        if len(kept) != len(self._rows):
            order = hole_filling_order(kept)
            self._batch.keep(order)
            self._rows = [self._rows[i] for i in order]

    def _finish(self, seq: Sequence, reason: str) -> None:
        with self._cond:
            if seq.finish_reason is None:
                seq.finish_reason = reason

    def _end(self, slot: _Slot, reason: str, outbox: Outbox) -> None:
        self._finish(slot.seq, reason)
        outbox.setdefault(slot.seq._loop, []).append((slot.seq, [_END]))

    def _fail(self, slot: _Slot, exc: Exception, outbox: Outbox) -> None:
        self._fail_sequence(slot.seq, exc, outbox)

    def _fail_sequence(self, seq: Sequence, exc: Exception, outbox: Outbox) -> None:
        self._finish(seq, "error")
        error = exc if isinstance(exc, LmforgeError) else LmforgeError(f"model step failed: {exc}")
        outbox.setdefault(seq._loop, []).append((seq, [error]))


PADDING_SLACK = 1.25  # a group of windows read together computes at most this many pad tokens


def read_groups(slots: list[_Slot]) -> list[list[_Slot]]:
    """The windows to read, in groups read together (:func:`similar_lengths`); a sequence
    that wants its prompt's logprobs, or no new tokens, reads alone."""
    alone = [[s] for s in slots if _reads_alone(s)]
    rest = [s for s in slots if not _reads_alone(s)]
    groups = similar_lengths([len(s.history) - s.start for s in rest])
    return alone + [[rest[i] for i in group] for group in groups]


def similar_lengths(lengths: list[int]) -> list[list[int]]:
    """Indices of ``lengths`` in groups of similar lengths, shortest first: padding a group
    to its longest adds at most a quarter (:data:`PADDING_SLACK`) to its tokens.

    >>> similar_lengths([96, 3, 40, 96, 4, 45, 3])
    [[1, 6, 4], [2, 5], [0, 3]]
    """
    groups: list[list[int]] = []
    tokens = 0
    for i in sorted(range(len(lengths)), key=lengths.__getitem__):
        length = lengths[i]
        if groups and length * (len(groups[-1]) + 1) <= PADDING_SLACK * (tokens + length):
            groups[-1].append(i)
            tokens += length
        else:
            groups.append([i])
            tokens = length
    return groups


def _reads_alone(slot: _Slot) -> bool:
    first = slot.generated == 0
    return slot.config.max_new_tokens == 0 or (first and slot.seq.request.prompt_logprobs)


def hole_filling_order(kept: list[int]) -> list[int]:
    """An order of the surviving rows ``kept`` (ascending) in which each survivor keeps its
    place when it is inside the new size, and the others fill the holes.

    >>> hole_filling_order([0, 2, 3, 4])     # row 1 left: row 4 moves into it
    [0, 4, 2, 3]
    """
    size = len(kept)
    survivors = set(kept)
    movers = iter(r for r in kept if r >= size)
    return [j if j in survivors else next(movers) for j in range(size)]


def _run_call(
    fn: Callable[[], Any], loop: asyncio.AbstractEventLoop, future: asyncio.Future
) -> None:
    try:
        result = fn()
    except Exception as exc:  # handed to the caller
        loop.call_soon_threadsafe(_fail_future, future, exc)
    else:
        loop.call_soon_threadsafe(_set_future, future, result)


def _set_future(future: asyncio.Future, result: Any) -> None:
    if not future.done():
        future.set_result(result)


def _fail_future(future: asyncio.Future, exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)


__all__ = ["Engine", "EngineStopped", "QueueFull", "Request", "Sequence", "TokenInfo"]
