"""Fuzzing the files lmforge reads: random mutations of a valid tokenizer JSON (each kind), a
run's config.json, a TOML configuration and a safetensors header either load or raise one of
lmforge's own errors (:class:`LmforgeError`), never anything else."""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import struct
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmforge.config import load_config_file, resolve_config
from lmforge.errors import LmforgeError
from lmforge.runs import load_run, load_weights, read_run_config
from lmforge.tokenizers.base import load_tokenizer, train_tokenizer
from lmforge.training.trainer import resume_config
from tests.test_errors import train_small_run

FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# --- mutations of a JSON-like tree -----------------------------------------------------------

SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=8,
)


def paths(tree: Any, prefix: tuple = ()) -> Iterator[tuple]:
    """Every path (a tuple of keys and indices) to a node of ``tree``, the root included."""
    yield prefix
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from paths(value, (*prefix, key))
    elif isinstance(tree, list):
        for i, value in enumerate(tree):
            yield from paths(value, (*prefix, i))


def mutate(tree: Any, data: st.DataObject, rounds: int = 3) -> Any:
    """Apply up to ``rounds`` random edits to a copy of ``tree``: replace a node by a random
    value, delete a key or an item, add a key, or nudge a number."""
    tree = json.loads(json.dumps(tree))
    for _ in range(data.draw(st.integers(1, rounds), label="rounds")):
        path = data.draw(st.sampled_from(list(paths(tree))), label="path")
        action = data.draw(st.sampled_from(["replace", "delete", "add", "nudge"]), label="edit")
        parent = tree
        for step in path[:-1]:
            parent = parent[step]
        node = parent[path[-1]] if path else tree
        if action == "replace" or (action == "nudge" and not isinstance(node, int | float)):
            value = data.draw(VALUES, label="value")
            if path:
                parent[path[-1]] = value
            else:
                tree = value
        elif action == "delete" and path:
            del parent[path[-1]]
        elif action == "add" and isinstance(node, dict):
            node[data.draw(st.text(max_size=8), label="key")] = data.draw(VALUES, label="value")
        elif action == "nudge" and path and not isinstance(node, bool):
            parent[path[-1]] = node + data.draw(st.sampled_from([-1, 1, -(2**40), 0.5]))
    return tree


def dumps(tree: Any) -> str:
    """JSON as Python's json module writes it (NaN and Infinity included, as lmforge may meet
    them in a hand-edited file)."""
    return json.dumps(tree)


def only_lmforge_errors(load, *args: Any) -> None:
    """Call ``load(*args)``; an :class:`LmforgeError` is fine, anything else fails the test."""
    with contextlib.suppress(LmforgeError):
        load(*args)


# --- tokenizer files -------------------------------------------------------------------------

TEXT = "the good, the bad and the ugly\nto be or not to be, ça va? 日本\n" * 4
TOKENIZERS = {
    "char": train_tokenizer("char", TEXT, unk=True),
    "word": train_tokenizer("word", TEXT, unk=True),
    "bpe": train_tokenizer("bpe", TEXT, vocab_size=280, special=["<|endoftext|>"]),
}


@pytest.mark.parametrize("kind", sorted(TOKENIZERS))
@FUZZ
@given(data=st.data())
def test_mutated_tokenizer_files_load_or_raise_lmforge_errors(kind, data, tmp_path):
    tree = mutate(TOKENIZERS[kind].to_dict(), data)
    path = tmp_path / "tokenizer.json"
    path.write_text(dumps(tree), encoding="utf-8")
    try:
        tokenizer = load_tokenizer(path)
    except LmforgeError:
        return
    for text in ("the good", "ça va 日本", ""):  # a tokenizer that loads is usable
        only_lmforge_errors(lambda t: tokenizer.decode(tokenizer.encode(t)), text)


@pytest.mark.parametrize("kind", sorted(TOKENIZERS))
@FUZZ
@given(data=st.data())
def test_byte_edits_of_tokenizer_files_raise_lmforge_errors(kind, data, tmp_path):
    raw = bytearray(json.dumps(TOKENIZERS[kind].to_dict()).encode())
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(raw) - 1))
        raw[at] = data.draw(st.integers(0, 255))
    path = tmp_path / "tokenizer.json"
    path.write_bytes(bytes(raw))
    only_lmforge_errors(load_tokenizer, path)


# --- run directories: config.json and weights ------------------------------------------------


@pytest.fixture(scope="module")
def small_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run, _ = train_small_run(tmp_path_factory.mktemp("fuzz-run"))
    return run


@pytest.fixture(scope="module")
def small_model(small_run: Path) -> Any:
    return load_run(small_run, "final", "cpu").model


@FUZZ
@given(data=st.data())
def test_mutated_config_json_loads_or_raises_lmforge_errors(small_run, data):
    tree = mutate(json.loads((small_run / "config.json").read_text()), data)
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        shutil.copytree(small_run, run)
        (run / "config.json").write_text(dumps(tree), encoding="utf-8")
        only_lmforge_errors(read_run_config, run)
        only_lmforge_errors(load_run, run, "final", "cpu")
        only_lmforge_errors(resume_config, run)  # what --resume and eval read of it


def safetensors_parts(path: Path) -> tuple[dict[str, Any], bytes]:
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + length]), raw[8 + length :]


@FUZZ
@given(data=st.data())
def test_mutated_safetensors_headers_load_or_raise_lmforge_errors(
    small_run, small_model, data, tmp_path
):
    header, body = safetensors_parts(small_run / "model.safetensors")
    text = dumps(mutate(header, data)).encode()
    length = len(text) + data.draw(st.sampled_from([0, 0, 0, -1, 1, 8, -8, 2**40]))
    path = tmp_path / "model.safetensors"
    path.write_bytes(struct.pack("<Q", max(length, 0)) + text + body)
    only_lmforge_errors(load_weights, small_model, path)


# --- TOML configuration files ----------------------------------------------------------------


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return (
            "nan"
            if math.isnan(value)
            else ("inf" if value > 0 else "-inf")
            if math.isinf(value)
            else repr(value)
        )
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    return json.dumps(str(value))  # strings; None has no TOML form and becomes "None"


def to_toml(tree: dict[str, Any]) -> str:
    """A TOML document: scalars first, then one table per dict-valued key."""
    lines = [
        f"{json.dumps(k)} = {toml_value(v)}" for k, v in tree.items() if not isinstance(v, dict)
    ]
    for key, table in tree.items():
        if isinstance(table, dict):
            lines.append(f"[{json.dumps(key)}]")
            lines += [f"{json.dumps(k)} = {toml_value(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


VALID_TOML = {
    "out": "runs/fuzz",
    "data": {"corpus": "tinyshakespeare", "val_fraction": 0.1},
    "tokenizer": {"kind": "bpe", "vocab_size": 512, "special": ["<|endoftext|>"]},
    "model": {"family": "lstm", "n_hidden": 64, "n_layer": 1, "dropout": 0.1},
    "train": {"batch_size": 8, "max_steps": 10, "learning_rate": 0.003, "device": "cpu"},
}


def test_the_toml_writer_round_trips_the_valid_config(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text(to_toml(VALID_TOML))
    assert load_config_file(path) == VALID_TOML
    assert resolve_config({}, path).model["n_hidden"] == 64


@FUZZ
@given(data=st.data())
def test_mutated_toml_configs_resolve_or_raise_lmforge_errors(data, tmp_path):
    tree = mutate(VALID_TOML, data)
    path = tmp_path / "run.toml"
    path.write_text(to_toml(tree) if isinstance(tree, dict) else toml_value(tree), "utf-8")
    only_lmforge_errors(resolve_config, {}, path)


@FUZZ
@given(data=st.data())
def test_text_edits_of_toml_configs_raise_lmforge_errors(data, tmp_path):
    text = list(to_toml(VALID_TOML))
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(text) - 1))
        text[at] = data.draw(st.characters(codec="utf-8"))
    path = tmp_path / "run.toml"
    path.write_text("".join(text), "utf-8")
    only_lmforge_errors(resolve_config, {}, path)
