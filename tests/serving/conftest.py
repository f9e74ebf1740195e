"""Fixtures for the serving tests: tiny run directories (untrained, built in a second) and real
servers on loopback sockets (uvicorn in a background thread), stopped even when a test fails.

    def test_something(server):               # a shared server: models "tiny-gpt" and "tiny-lstm"
        httpx.get(f"{server.url}/v1/models")

    def test_other(start_server, runs):       # a server of one's own, e.g. with a key
        with start_server(runs, api_key="sk-test", max_batch=2) as srv: ...
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

TEXT_LINES = [
    "the good, the bad and the ugly",
    "to be or not to be, that is the question",
    "all that glitters is not gold",
    "it is great to hear that you have succeeded",
]
TRANSFORMER = "tiny-gpt"
LSTM = "tiny-lstm"
BLOCK_SIZE = 32


def make_run(directory: Path, family: str, text: str, seed: int = 0, **options: Any) -> Path:
    """A loadable run directory: a char tokenizer of ``text`` and a ``family`` model with
    random weights (seeded)."""
    import torch

    from lmforge.config import resolve_config
    from lmforge.fileio import atomic_write_json
    from lmforge.models import build_model
    from lmforge.runs import (
        CONFIG_FILE,
        FINAL_WEIGHTS,
        SCHEMA_VERSION,
        TOKENIZER_FILE,
        save_weights,
    )
    from lmforge.tokenizers import train_tokenizer

    tokenizer = train_tokenizer("char", text)
    torch.manual_seed(seed)
    model = build_model(family, vocab_size=tokenizer.vocab_size, **options)
    directory.mkdir(parents=True)
    tokenizer.save(directory / TOKENIZER_FILE)
    save_weights(model, directory / FINAL_WEIGHTS)
    config = resolve_config({"out": str(directory)})
    atomic_write_json(
        directory / CONFIG_FILE,
        {"schema_version": SCHEMA_VERSION, "model": model.config_dict(), "run": config.to_dict()},
    )
    return directory


@pytest.fixture(scope="session")
def runs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two runs: a 1-layer Transformer (block size 32) and a 1-layer LSTM, char-level."""
    root = tmp_path_factory.mktemp("serving-runs")
    text = "\n".join(TEXT_LINES) + "\n"
    return [
        make_run(
            root / TRANSFORMER,
            "transformer",
            text,
            n_layer=1,
            n_head=2,
            n_embd=16,
            block_size=BLOCK_SIZE,
        ),
        make_run(root / LSTM, "lstm", text, seed=1, n_embd=8, n_hidden=16, n_layer=1),
    ]


@dataclasses.dataclass
class RunningServer:
    """A server on 127.0.0.1: its base URL, the app and its served models."""

    url: str
    app: Any
    served: dict[str, Any]

    def engine(self, name: str) -> Any:
        return self.served[name].engine


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def running_server(run_dirs: list[Path], **settings: Any) -> Iterator[RunningServer]:
    """Load ``run_dirs`` and serve them with uvicorn in a thread until the block ends.
    ``settings``: ``max_batch``, ``max_queue`` (engine) and :class:`Settings` fields."""
    import uvicorn

    from lmforge.runs import load_run
    from lmforge.serving.app import ServedModel, Settings, create_app
    from lmforge.serving.engine import Engine

    max_batch = settings.pop("max_batch", 32)
    max_queue = settings.pop("max_queue", 256)
    served = []
    for run_dir in run_dirs:
        run = load_run(run_dir, device="cpu")
        engine = Engine(run.model, max_batch=max_batch, max_queue=max_queue, name=run_dir.name)
        served.append(ServedModel(run_dir.name, run.model, run.tokenizer, engine))
    app = create_app(served, Settings(max_queue=max_queue, **settings))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_config=None, log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.01)
        yield RunningServer(f"http://127.0.0.1:{port}", app, {m.name: m for m in served})
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


@pytest.fixture(scope="session")
def server(runs: list[Path]) -> Iterator[RunningServer]:
    """One server for the session, without a key, serving both runs."""
    with running_server(runs) as srv:
        yield srv


@pytest.fixture
def start_server(runs: list[Path]) -> Callable[..., contextlib.AbstractContextManager]:
    """``start_server(run_dirs, **settings)``: a server of the test's own (a context manager)."""
    return running_server


def sse_events(lines: Iterator[str]) -> Iterator[Any]:
    """The JSON payloads of a server-sent event stream, then the string ``[DONE]``."""
    for line in lines:
        if line.startswith("data: "):
            data = line[len("data: ") :]
            yield data if data == "[DONE]" else json.loads(data)


def corpus_text(n_lines: int = 40, seed: int = 0) -> str:
    rng = random.Random(seed)
    return "\n".join(rng.choice(TEXT_LINES) for _ in range(n_lines))
