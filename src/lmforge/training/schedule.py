"""The learning-rate schedule: linear warmup, then cosine decay (or constant).

The cosine spans ``max_steps`` or, with a time budget, the budget's seconds, whichever runs
out first, so a run that is cut by its budget still ends at the low learning rate.
"""

from __future__ import annotations

import math

from lmforge.config import TrainConfig


def progress_fraction(config: TrainConfig, step: int, elapsed_s: float) -> float:
    """How far through the run we are, in [0, 1]: the larger of the step and time fractions
    (each measured after warmup for steps).

    >>> progress_fraction(TrainConfig(max_steps=1100, warmup_steps=100), 600, 0.0)
    0.5
    """
    fraction = 0.0
    if config.max_steps:
        span = max(config.max_steps - config.warmup_steps, 1)
        fraction = max(fraction, (step - config.warmup_steps) / span)
    if config.time_budget:
        fraction = max(fraction, elapsed_s / config.time_budget)
    return min(max(fraction, 0.0), 1.0)


def learning_rate(config: TrainConfig, step: int, elapsed_s: float = 0.0) -> float:
    """The learning rate for ``step`` (0-based).

    >>> cfg = TrainConfig(learning_rate=1.0, min_lr=0.0, warmup_steps=10, max_steps=110)
    >>> [learning_rate(cfg, step) for step in (0, 9, 60, 110)]
    [0.1, 1.0, 0.5, 0.0]
    """
    if step < config.warmup_steps:
        return config.learning_rate * (step + 1) / config.warmup_steps
    if config.lr_schedule == "constant":
        return config.learning_rate
    fraction = progress_fraction(config, step, elapsed_s)
    low = config.final_lr
    return low + 0.5 * (config.learning_rate - low) * (1.0 + math.cos(math.pi * fraction))
