"""Shared test set-up: a private cache, the shared corpora, and small corpora made here."""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import settings

from lmforge.errors import DownloadError

# CI replays a fixed set of examples, so a red CI always means a change broke something;
# runs elsewhere draw new examples each time and keep exploring.
settings.register_profile("ci", derandomize=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"


if "LMFORGE_DATA_DIR" not in os.environ and SHARED_DATA.is_dir():
    # Named corpora come from ../shared/data when it is there (as in CI), else from
    # LMFORGE_DATA_DIR or a download.
    os.environ["LMFORGE_DATA_DIR"] = str(SHARED_DATA)


@contextmanager
def _skip_when_offline() -> Iterator[None]:
    """Turn a corpus that is neither in LMFORGE_DATA_DIR nor downloadable into a skip."""
    try:
        yield
    except DownloadError as exc:
        pytest.skip(f"needs a corpus that is not on this machine and cannot be downloaded: {exc}")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Iterator[None]:
    with _skip_when_offline():
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    with _skip_when_offline():
        return (yield)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """Every test gets an empty cache of its own and is online."""
    monkeypatch.setenv("LMFORGE_CACHE_DIR", str(tmp_path_factory.mktemp("lmforge-cache")))
    monkeypatch.delenv("LMFORGE_OFFLINE", raising=False)


def markov_text(n_chars: int, seed: int = 0, alphabet: str = "abcdefg \n") -> str:
    """Text from a fixed random first-order Markov chain: structure a bigram can learn."""
    rng = random.Random(seed)
    weights = {a: [rng.random() ** 3 for _ in alphabet] for a in alphabet}
    out = [alphabet[0]]
    for _ in range(n_chars - 1):
        out.append(rng.choices(alphabet, weights[out[-1]])[0])
    return "".join(out)


@pytest.fixture
def tiny_corpus(tmp_path: Path) -> Path:
    """A 6,000-character text file from a Markov chain."""
    path = tmp_path / "tiny.txt"
    path.write_text(markov_text(6000), encoding="utf-8")
    return path


@pytest.fixture
def verse_corpus(tmp_path: Path) -> Path:
    """A small English text with repeated lines (for word-level and generation tests)."""
    lines = [
        "the good, the bad and the ugly",
        "to be or not to be, that is the question",
        "all that glitters is not gold",
        "it is great to hear that you have succeeded",
    ]
    rng = random.Random(1)
    text = "\n".join(rng.choice(lines) for _ in range(400)) + "\n"
    path = tmp_path / "verse.txt"
    path.write_text(text, encoding="utf-8")
    return path
