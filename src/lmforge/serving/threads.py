"""How many torch threads an engine gives its steps while it decodes one sequence alone.

``lmforge serve`` runs its engines on one core fewer than the machine has (the event loop needs
one for HTTP while many sequences stream). While a single sequence streams, the loop is nearly
idle, and whether a step gains from more threads depends on the model: a one-token step of the
2 × 512 LSTM runs 1.5–1.8× faster on 2 threads than on 1, one of the 192-wide ``tiny``
Transformer runs slower (its small operations wait for each other's threads). So the engine
times the model's own one-token step on each candidate count when it starts
(:func:`fastest_threads`), and uses the fastest while it has one sequence.

>>> threads_alone = fastest_threads(model, candidate_threads(cores=2, batched=1))  # 1 or 2
"""

from __future__ import annotations

import os
import statistics
import threading
import time

import torch

from lmforge.models.base import LanguageModel

GAIN = 1.1  # more threads must make a step at least this much faster to be chosen
_timing = threading.Lock()  # engines started together time their models one after the other


def candidate_threads(cores: int, batched: int) -> list[int]:
    """The thread counts worth timing: 1, 2, 4, … up to ``cores``, the cores themselves, and
    the count the batched steps use.

    >>> candidate_threads(2, 1), candidate_threads(16, 15), candidate_threads(6, 5)
    ([1, 2], [1, 2, 4, 8, 15, 16], [1, 2, 4, 5, 6])
    """
    counts = {batched, max(1, cores)}
    count = 1
    while count < cores:
        counts.add(count)
        count *= 2
    return sorted(counts)


def machine_cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def choose_threads(seconds: dict[int, float]) -> int:
    """The thread count of the fastest step (``seconds``: per step, by thread count), where
    each count above the fewest must beat the best so far by :data:`GAIN`: timing noise never
    buys threads that do not pay.

    >>> choose_threads({1: 4.0e-3, 2: 2.2e-3}), choose_threads({1: 1.3e-3, 2: 1.25e-3})
    (2, 1)
    """
    best = min(seconds)
    for count in sorted(seconds):
        if seconds[count] * GAIN <= seconds[best]:
            best = count
    return best


@torch.inference_mode()
def fastest_threads(
    model: LanguageModel, candidates: list[int], steps: int = 6, rounds: int = 3
) -> int:
    """Of ``candidates``, the thread count whose one-token step of ``model`` (one sequence,
    after a one-token prompt) is fastest, by :func:`choose_threads` over the median of
    ``rounds`` rounds of ``steps`` steps, the counts taken in turn (one model at a time in
    this process). Leaves this thread's torch thread count (it is per thread) at the chosen
    one."""
    if len(candidates) == 1:
        torch.set_num_threads(candidates[0])
        return candidates[0]
    with _timing:
        chosen = choose_threads(_step_seconds(model, candidates, steps, rounds))
    torch.set_num_threads(chosen)
    return chosen


def _step_seconds(
    model: LanguageModel, candidates: list[int], steps: int, rounds: int
) -> dict[int, float]:
    """The median seconds of a one-token step of ``model`` on each thread count."""
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    token = torch.zeros(1, 1, dtype=torch.long, device=device)
    context = model.max_context
    steps = steps if context is None else max(1, min(steps, context - 1))
    model(token, model(token)[1])  # first use: allocations, a Transformer's head copy
    timings: dict[int, list[float]] = {count: [] for count in candidates}
    for _ in range(rounds):
        for count in candidates:
            torch.set_num_threads(count)
            _, state = model(token)
            started = time.perf_counter()
            for _ in range(steps):
                logits, state = model(token, state)
            logits.sum().item()  # waits for the steps (a GPU's, say)
            timings[count].append((time.perf_counter() - started) / steps)
    return {count: statistics.median(t) for count, t in timings.items()}
