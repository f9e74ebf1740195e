"""Ctrl-C during training: the first press asks the loop to stop after the current step and
save a checkpoint; a second press aborts at once."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator


@contextlib.contextmanager
def stop_on_sigint(stop: threading.Event, say: Callable[[str], None]) -> Iterator[None]:
    """While the block runs, SIGINT sets ``stop`` (and a second one raises KeyboardInterrupt).
    Outside the main thread, where Python cannot take signals, this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        say("stopping after this step to save a checkpoint (Ctrl-C again to abort)")

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
