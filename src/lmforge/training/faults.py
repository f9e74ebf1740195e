"""Test-only fault injection: kill or interrupt a training run at a chosen point.

Tests set ``LMFORGE_TEST_FAULT="<action>:<point>@<step>"`` in a training process:

- action ``kill`` sends SIGKILL to the process (a crash, a power cut, the OOM killer);
  ``interrupt`` does what a first Ctrl-C does.
- point ``step`` is the end of an optimizer step, ``record`` the moment after a metrics record
  is appended, ``<file>.tmp`` the moment a checkpoint file's temporary copy is complete but not
  yet renamed (e.g. ``trainer_state.pt.tmp``), and ``<file>`` the moment after its rename.
- the fault fires the first time the point is reached at a step ``>= <step>``, on rank 0.

Unset (as always outside tests) each point costs one comparison with ``None``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

from lmforge import fileio
from lmforge.errors import ConfigError

ENV_VAR = "LMFORGE_TEST_FAULT"


@dataclasses.dataclass
class Fault:
    """One planned fault: ``action`` at ``point`` from ``step`` on."""

    action: str
    point: str
    step: int
    stop: threading.Event
    fired: bool = False

    @classmethod
    def from_env(cls, stop: threading.Event, is_main: bool) -> Fault | None:
        """The fault ``$LMFORGE_TEST_FAULT`` plans for this process, if any."""
        spec = os.environ.get(ENV_VAR)
        if not spec or not is_main:
            return None
        try:
            action, rest = spec.split(":", 1)
            point, step = rest.rsplit("@", 1)
            fault = cls(action, point, int(step), stop)
        except ValueError:
            fault = None
        if fault is None or action not in ("kill", "interrupt"):
            raise ConfigError(f"{ENV_VAR}={spec!r} is not '<kill|interrupt>:<point>@<step>'")
        return fault

    def reached(self, point: str, step: int) -> None:
        """Fire if this is the planned point."""
        if self.fired or point != self.point or step < self.step:
            return
        self.fired = True
        if self.action == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        self.stop.set()


@contextlib.contextmanager
def watching_writes(fault: Fault | None, step: int) -> Iterator[None]:
    """Within the block, completed temporary files are fault points ``<file>.tmp``."""
    if fault is None:
        yield
        return

    def hook(tmp: Path, target: Path) -> None:
        fault.reached(f"{target.name}.tmp", step)

    fileio.before_rename.append(hook)
    try:
        yield
    finally:
        fileio.before_rename.remove(hook)
