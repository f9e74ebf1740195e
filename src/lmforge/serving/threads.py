"""How many torch threads an engine gives its steps while it decodes one sequence alone.

``lmforge serve`` runs its engines on one core fewer than the machine has (the event loop needs
one for HTTP while many sequences stream). While a single sequence streams, the loop is nearly
idle, and whether a step gains from more threads depends on the model and the machine: on 2
cores a one-token step of the 2 × 512 LSTM runs 1.3–1.8× faster on 2 threads than on 1, one of
the 192-wide ``tiny`` Transformer gains nothing (its small operations wait for each other's
threads); on 16 cores ``tiny`` is several times faster on 1 thread than on 15. Timing the
model alone at start-up misjudges this (start-up work shares the cores, and alone there is no
event loop), so the engine times its own one-sequence steps in service: a :class:`ThreadTrial`
gives the first ones each candidate count in turn, then keeps the fastest.

>>> trial = ThreadTrial([1, 2])
>>> while trial.chosen is None:
...     count = trial.count()
...     chosen = trial.record(count, 4e-3 if count == 1 else 2e-3)
>>> chosen, trial.chosen
(2, 2)
"""

from __future__ import annotations

import os
import statistics

# more threads must make a step at least this much faster to be chosen (noise never buys
# threads that do not pay)
GAIN = 1.2


def candidate_threads(cores: int, batched: int) -> list[int]:
    """The thread counts worth trying: 1, 2, 4, … up to ``cores``, the cores themselves, and
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
    each count above the fewest must beat the best so far by :data:`GAIN`.

    >>> choose_threads({1: 4.0e-3, 2: 2.2e-3}), choose_threads({1: 1.3e-3, 2: 1.2e-3})
    (2, 1)
    """
    best = min(seconds)
    for count in sorted(seconds):
        if seconds[count] * GAIN <= seconds[best]:
            best = count
    return best


class ThreadTrial:
    """Which thread count suits one-sequence steps, learnt from the steps themselves:
    candidates take turns in blocks of :attr:`BLOCK` steps until each has :attr:`STEPS`
    timed steps (the first step after a switch is not timed); then :func:`choose_threads`
    over the medians decides. After :attr:`RETRY` more one-sequence steps the trial runs
    again, so that a choice made in a noisy moment does not stay."""

    BLOCK = 4
    STEPS = 16
    RETRY = 4096

    def __init__(self, candidates: list[int]) -> None:
        self.candidates = sorted(set(candidates))
        self.seconds: dict[int, list[float]] = {count: [] for count in self.candidates}
        self.chosen: int | None = self.candidates[0] if len(self.candidates) == 1 else None
        self.trials = 0  # trials completed
        self._steps = 0  # steps of the running trial, or since the last one ended
        self._last: int | None = None

    def count(self) -> int:
        """The thread count for the next one-sequence step."""
        if self.chosen is not None:
            return self.chosen
        return self.candidates[(self._steps // self.BLOCK) % len(self.candidates)]

    def record(self, count: int, seconds: float) -> int | None:
        """Note that a one-sequence step on ``count`` threads took ``seconds``; the chosen
        count when this step ends a trial, else None."""
        self._steps += 1
        if self.chosen is not None:
            if len(self.candidates) > 1 and self._steps >= self.RETRY:
                self.chosen, self._steps, self._last = None, 0, None
                self.seconds = {c: [] for c in self.candidates}
            return None
        switched, self._last = count != self._last, count
        if not switched:
            self.seconds[count].append(seconds)
        if all(len(times) >= self.STEPS for times in self.seconds.values()):
            medians = {c: statistics.median(times) for c, times in self.seconds.items()}
            self.chosen, self._steps = choose_threads(medians), 0
            self.trials += 1
            return self.chosen
        return None
