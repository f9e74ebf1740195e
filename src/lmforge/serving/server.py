"""``lmforge serve``: load runs, start one engine per model, and serve the app with uvicorn.

>>> serve(["runs/shakespeare"], port=0)      # prints "lmforge serve: http://127.0.0.1:PORT ..."

Ctrl-C or SIGTERM stops accepting connections, lets the requests in flight finish for up to
``drain_seconds``, stops the engines and returns 0.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import FrameType

import uvicorn

from lmforge.errors import ConfigError, LmforgeError

log = logging.getLogger("lmforge.serve")


def model_names(runs: Sequence[str | os.PathLike[str]]) -> list[str]:
    """The model id of each run: its directory's name; two runs with one name are an error.

    >>> model_names(["runs/a", "other/b/"])
    ['a', 'b']
    """
    names = [Path(run).resolve().name for run in runs]
    seen: dict[str, str] = {}
    for run, name in zip(runs, names, strict=True):
        if name in seen:
            raise ConfigError(
                f"runs {seen[name]} and {run} would both be served as model '{name}'; "
                "give each run directory its own name"
            )
        seen[name] = str(run)
    return names


def read_api_key(api_key: str | None, api_key_file: str | None) -> str | None:
    """The key from ``--api-key`` or the first line of ``--api-key-file`` (None: no key)."""
    if api_key is not None and api_key_file is not None:
        raise ConfigError("give --api-key or --api-key-file, not both")
    if api_key_file is not None:
        try:
            lines = Path(api_key_file).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read --api-key-file {api_key_file} ({exc})") from None
        api_key = lines[0].strip() if lines else ""
    if api_key is not None and not api_key.strip():
        raise ConfigError("the API key is empty; give a non-empty --api-key or key file")
    return api_key.strip() if api_key is not None else None


def engine_threads() -> int:
    """The torch threads ``lmforge serve`` gives its engines unless told: one core fewer than
    torch would use, and at least one. The event loop (HTTP, JSON, the sockets) needs a core
    of its own while the engine decodes; on 2 cores an engine on 2 threads decodes a small
    model at about half the rate of one on 1 (see BENCHMARKS.md, serving)."""
    import torch

    return max(1, torch.get_num_threads() - 1)


def serve(
    runs: Sequence[str | os.PathLike[str]],
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | None = None,
    max_batch: int = 32,
    max_queue: int = 256,
    max_tokens_limit: int = 4096,
    device: str | None = None,
    checkpoint: str = "best",
    drain_seconds: float = 10.0,
    threads: int | None = None,
) -> int:
    """Serve ``runs`` until Ctrl-C or SIGTERM; returns the exit code 0. ``threads``: torch's
    intra-op threads for the engines (None: :func:`engine_threads`, and while an engine has
    one sequence, the count its first one-sequence steps find fastest:
    :mod:`lmforge.serving.threads`)."""
    from lmforge.runs import load_run
    from lmforge.serving.app import ServedModel, Settings, create_app
    from lmforge.serving.engine import Engine

    for flag, value in (
        ("--max-batch", max_batch),
        ("--max-queue", max_queue),
        ("--max-tokens-limit", max_tokens_limit),
    ):
        if value < 1:
            raise ConfigError(f"{flag} must be at least 1, got {value}")
    if threads is not None and threads < 1:
        raise ConfigError(f"--threads must be at least 1, got {threads}")
    if not 0 <= port <= 65535:
        raise ConfigError(f"--port must be in 0..65535 (0: any free port), got {port}")
    names = model_names(runs)
    import torch

    torch.set_num_threads(threads or engine_threads())
    served = []
    for name, run_dir in zip(names, runs, strict=True):
        run = load_run(run_dir, checkpoint=checkpoint, device=device)
        engine = Engine(
            run.model,
            max_batch=max_batch,
            max_queue=max_queue,
            name=name,
            threads_alone=None if threads else "auto",
        )
        served.append(ServedModel(name, run.model, run.tokenizer, engine))
    settings = Settings(
        api_key=api_key,
        max_tokens_limit=max_tokens_limit,
        max_queue=max_queue,
        drain_seconds=drain_seconds,
    )
    app = create_app(served, settings)
    _log_to_stderr()
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=int(max(1, drain_seconds)),
    )
    try:
        sock = config.bind_socket()
    except (OSError, SystemExit) as exc:
        raise LmforgeError(
            f"cannot listen on {host}:{port} ({exc}); choose another --port or --host"
        ) from None
    host_shown = f"[{host}]" if ":" in host else host
    server = _Server(config)
    server.banner = (
        f"lmforge serve: http://{host_shown}:{sock.getsockname()[1]} (models: {', '.join(names)})"
    )
    server.run(sockets=[sock])
    print("lmforge serve: stopped", file=sys.stderr, flush=True)
    return 0


def _log_to_stderr() -> None:
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("lmforge serve: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False


class _Server(uvicorn.Server):
    """uvicorn's server, except that a caught Ctrl-C or SIGTERM ends it with exit code 0
    (uvicorn raises the signal again after its graceful shutdown), and ``banner`` is printed
    once it accepts connections."""

    banner = ""

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and self.banner:
            print(self.banner, file=sys.stderr, flush=True)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        handled = (signal.SIGINT, signal.SIGTERM)
        original = {sig: signal.signal(sig, self._on_signal) for sig in handled}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)

    def _on_signal(self, sig: int, frame: FrameType | None) -> None:
        if not self.should_exit:
            print(
                "lmforge serve: stopping; finishing the requests in flight",
                file=sys.stderr,
                flush=True,
            )
        self.handle_exit(sig, frame)
