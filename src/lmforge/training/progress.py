"""What the trainer shows while it runs: the opening line, the progress bar and messages."""

from __future__ import annotations

import sys
from typing import Any

from tqdm import tqdm

from lmforge.config import TrainConfig

_TIME_BAR = "{l_bar}{bar}| {n:.0f}/{total_fmt}s [{elapsed}<{remaining}{postfix}]"


class Progress:
    """A progress bar over steps (``max_steps``) or seconds (time budget), and messages
    printed above it; silent when ``enabled`` is false."""

    def __init__(self, config: TrainConfig, enabled: bool, step: int, elapsed_s: float) -> None:
        self.config = config
        self.enabled = enabled
        disable = None if enabled else True
        if config.max_steps is not None:
            self.bar = tqdm(
                total=config.max_steps,
                initial=step,
                desc="training",
                unit="step",
                disable=disable,
                dynamic_ncols=True,
            )
        else:
            self.bar = tqdm(
                total=round(config.time_budget or 0),
                initial=round(elapsed_s),
                desc="training",
                unit="s",
                disable=disable,
                dynamic_ncols=True,
                bar_format=_TIME_BAR,
            )

    def say(self, message: str) -> None:
        """Print ``message`` above the bar (to stderr)."""
        say(self.enabled, message)

    def advance(self, step_seconds: float) -> None:
        """One step done, which took ``step_seconds``."""
        self.bar.update(1 if self.config.max_steps is not None else step_seconds)

    def show(self, record: dict[str, Any], val_loss: float | None) -> None:
        """Show a metrics record beside the bar."""
        postfix = {"step": str(record["step"])}
        if record.get("train_loss") is not None:
            postfix["loss"] = f"{record['train_loss']:.4f}"
        if val_loss is not None:
            postfix["val"] = f"{val_loss:.4f}"
        if record.get("tokens_per_s"):
            postfix["tok/s"] = f"{record['tokens_per_s']:,.0f}"
            postfix["ms/step"] = f"{1000 * record['step_time_s']:.0f}"
        postfix["lr"] = f"{record['lr']:.2e}"
        self.bar.set_postfix(postfix, refresh=False)

    def close(self) -> None:
        """Remove the bar."""
        self.bar.close()


def say(enabled: bool, message: str) -> None:
    """Print ``message`` to stderr without disturbing a progress bar."""
    if enabled:
        tqdm.write(message, file=sys.stderr)
