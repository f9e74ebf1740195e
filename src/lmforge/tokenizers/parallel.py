"""Encoding the chunks of a long text in worker processes, results in order.

Each worker is sent the tokenizer once (as its JSON description) and then one chunk at a
time; at most two chunks per worker are in flight, so memory stays bounded however long the
text is, and the arrays come back in the order of the chunks.

>>> arrays = encode_in_processes(tok, chunk_stream(blocks), "plain", processes=4)
>>> list(ordered_map(len, ["a", "bb", "ccc"], processes=2))
[1, 2, 3]
"""

from __future__ import annotations

import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from lmforge.tokenizers.base import Tokenizer

IN_FLIGHT_PER_PROCESS = 2


def available_cpus() -> int:
    """The CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def ordered_map(
    function: Callable[[Any], Any],
    items: Iterable[Any],
    processes: int,
    initializer: Callable[..., None] | None = None,
    initargs: tuple[Any, ...] = (),
) -> Iterator[Any]:
    """``function(item)`` for each item, computed in ``processes`` worker processes (each set
    up once by ``initializer(*initargs)``), yielded in the order of ``items``; items are
    taken from ``items`` only as workers need them. ``function`` must be importable by name.
    With ``processes <= 1`` everything runs here, after ``initializer`` has run here."""
    if processes <= 1:
        if initializer is not None:
            initializer(*initargs)
        yield from map(function, items)
        return
    context = multiprocessing.get_context("spawn")  # safe after torch has started threads
    with context.Pool(processes, initializer=initializer, initargs=initargs) as pool:
        pending: deque[Any] = deque()
        for item in items:
            pending.append(pool.apply_async(function, (item,)))
            if len(pending) >= IN_FLIGHT_PER_PROCESS * processes:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


def encode_in_processes(
    tokenizer: Tokenizer, chunks: Iterable[str], special_text: str, processes: int
) -> Iterator[np.ndarray]:
    """``tokenizer.encode_chunk(chunk, special_text)`` for each chunk, computed in
    ``processes`` worker processes, yielded in the order of ``chunks``."""
    return ordered_map(
        _encode_in_worker,
        chunks,
        processes,
        initializer=_init_worker,
        initargs=(tokenizer.to_dict(), special_text),
    )


_WORKER: tuple[Any, str] | None = None


def _init_worker(description: dict[str, Any], special_text: str) -> None:
    global _WORKER
    from lmforge.tokenizers.base import tokenizer_from_dict

    _WORKER = (tokenizer_from_dict(description), special_text)


def _encode_in_worker(chunk: str) -> np.ndarray:
    assert _WORKER is not None
    tokenizer, special_text = _WORKER
    return tokenizer.encode_chunk(chunk, special_text)
