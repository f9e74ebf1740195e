"""Trainer state for exact resumption, and the metrics log.

``trainer_state.pt`` holds everything a resumed run needs to continue exactly as if it had not
stopped: the weights, the optimizer state, the step and token counters, the elapsed time, the
best validation loss, the window sampler's generator state and torch's RNG states. It is a
plain dictionary of tensors, numbers and strings, written atomically and read back with
``torch.load(weights_only=True)``, so loading it never runs code from the file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from lmforge.errors import RunError
from lmforge.fileio import atomic_write_text, atomic_write_with

STATE_FORMAT = 1


def save_trainer_state(path: str | os.PathLike[str], state: dict[str, Any]) -> None:
    """Write ``state`` (tensors, numbers, strings, nested dicts/lists) atomically."""
    payload = {"format": STATE_FORMAT, **state}
    atomic_write_with(path, lambda tmp: torch.save(payload, tmp))


def load_trainer_state(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a state written by :func:`save_trainer_state` (never unpickles arbitrary code)."""
    path = Path(path)
    if not path.is_file():
        raise RunError(
            f"cannot resume: {path} is missing (the run saved no checkpoint yet); "
            "start it again without --resume"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        reason = _short_reason(exc)
        raise RunError(
            f"cannot resume: {path} is damaged or not a trainer state ({reason}); start the run "
            "again, or resume from a backup of the run directory"
        ) from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise RunError(f"cannot resume: {path} has an unknown trainer-state format")
    return state


def _short_reason(exc: Exception) -> str:
    """The gist of torch.load's error: its unpickler's complaint, else its first line."""
    text = str(exc).strip()
    marker = "WeightsUnpickler error:"
    if marker in text:
        text = text[text.index(marker) :]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    gist = f"{lines[0]} {lines[1]}" if lines[0].endswith(":") and len(lines) > 1 else lines[0]
    return gist[:200]


class MetricsLog:
    """``metrics.jsonl``: one JSON object per logged step, appended and flushed."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def reset(self) -> None:
        """Start an empty log."""
        atomic_write_text(self.path, "")

    def truncate_after(self, step: int) -> dict[str, Any] | None:
        """Drop records of steps after ``step`` (a resumed run logs them again); returns the
        last record kept."""
        kept = [r for r in read_metrics(self.path) if r.get("step", 0) <= step]
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        return kept[-1] if kept else None

    def append(self, record: dict[str, Any]) -> None:
        """Add one record."""
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
            fh.flush()


def read_metrics(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """All records of a metrics log (a torn last line, from a killed run, is skipped)."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records
