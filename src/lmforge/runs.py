"""The run directory: the one artefact training writes and everything else reads.

    RUN/
      config.json         resolved configuration + lmforge version + schema version
      tokenizer.json      the tokenizer (one JSON file)
      model.safetensors   the latest weights          best.safetensors  best val loss so far
      trainer_state.pt    weights, optimizer, RNG and sampler state for --resume
      metrics.jsonl       one JSON object per logged step

>>> run = load_run("runs/shakespeare")
>>> run.model, run.tokenizer
(RecurrentLM(...), CharTokenizer(vocab_size=65))
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import torch

from lmforge.config import RunConfig, check_model_options
from lmforge.device import pick_device
from lmforge.errors import ConfigError, RunError
from lmforge.fileio import atomic_write_with
from lmforge.models.base import LanguageModel, model_from_config
from lmforge.tokenizers.base import Tokenizer, load_tokenizer

SCHEMA_VERSION = 1
CONFIG_FILE = "config.json"
TOKENIZER_FILE = "tokenizer.json"
FINAL_WEIGHTS = "model.safetensors"
BEST_WEIGHTS = "best.safetensors"
TRAINER_STATE = "trainer_state.pt"
METRICS_FILE = "metrics.jsonl"
CHECKPOINTS = {"final": FINAL_WEIGHTS, "best": BEST_WEIGHTS}


@dataclasses.dataclass
class Run:
    """A trained model ready to use: its directory, configuration, tokenizer and model."""

    directory: Path
    config: dict[str, Any]
    tokenizer: Tokenizer
    model: LanguageModel
    device: torch.device
    checkpoint: str


def save_weights(model: LanguageModel, path: str | os.PathLike[str], **metadata: Any) -> None:
    """Write the model's weights as safetensors, atomically. Tied weights are stored once, under
    the first of their names in sorted order, the others naming it in the metadata (the
    convention of safetensors' ``save_model``); weights that are views into one shared buffer
    (cuDNN's flattened RNN weights on a GPU) are stored each on its own."""
    from safetensors.torch import save_file

    state = model.state_dict()
    aliases = tied_names(state)
    tensors = {name: _own_storage(t.detach()) for name, t in state.items() if name not in aliases}
    info = {key: str(value) for key, value in metadata.items()}
    info.update({alias: kept for alias, kept in aliases.items() if alias not in info})
    info["model"] = json.dumps(model.config_dict())
    atomic_write_with(path, lambda tmp: save_file(tensors, str(tmp), metadata=info))


def tied_names(state: dict[str, torch.Tensor]) -> dict[str, str]:
    """Each name of ``state`` whose tensor is the very same view as another's (tied weights),
    mapped to the name kept for the group: the first in sorted order.

    >>> w = torch.zeros(3, 2)
    >>> tied_names({"head.weight": w, "embedding.weight": w, "bias": torch.zeros(3)})
    {'head.weight': 'embedding.weight'}
    """
    groups: dict[tuple[Any, ...], list[str]] = {}
    for name, t in state.items():
        key = (t.device, t.data_ptr(), t.dtype, tuple(t.shape), t.stride())
        groups.setdefault(key, []).append(name)
    aliases = {}
    for names in groups.values():
        kept = sorted(names)[0]
        aliases.update({name: kept for name in names if name != kept})
    return aliases


def _own_storage(t: torch.Tensor) -> torch.Tensor:
    """``t``, or a contiguous copy of it when it is a view into a larger buffer (safetensors
    stores no shared memory)."""
    if not t.is_contiguous():
        return t.contiguous()
    if t.untyped_storage().nbytes() != t.numel() * t.element_size():
        return t.clone()
    return t


def load_weights(model: LanguageModel, path: str | os.PathLike[str]) -> None:
    """Load safetensors weights into ``model``, wherever it is (strict: every tensor must
    match in name and shape; a tied weight may be stored under any one of its names)."""
    from safetensors.torch import load_file

    shapes = _stored_shapes(path)
    state = model.state_dict()
    for name, shape in shapes.items():
        if name in state and shape != tuple(state[name].shape):
            raise RunError(
                f"weights in {path} do not fit the model in config.json: {name} has shape "
                f"{list(shape)}, the model needs {list(state[name].shape)}; the weights and "
                "config.json come from different runs: put back the run's own files or train again"
            )
    try:
        stored = load_file(str(path))
    except Exception as exc:  # safetensors and torch raise many kinds on a damaged file
        raise RunError(f"cannot read weights from {path} ({exc}); the file is damaged") from None
    for alias, kept in tied_names(state).items():
        for missing, present in ((alias, kept), (kept, alias)):
            if missing not in stored and present in stored:
                stored[missing] = stored[present]
    missing, unexpected = sorted(set(state) - set(stored)), sorted(set(stored) - set(state))
    if missing or unexpected:
        raise RunError(
            f"weights in {path} do not fit the model in config.json (missing {missing}, "
            f"unexpected {unexpected}); the run directory mixes files of two runs"
        )
    model.load_state_dict(stored)


def _stored_shapes(path: str | os.PathLike[str]) -> dict[str, tuple[int, ...]]:
    """The name and shape of each tensor in a safetensors file, read from its header."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return {name: tuple(handle.get_slice(name).get_shape()) for name in handle.keys()}  # noqa: SIM118
    except Exception as exc:  # SafetensorError, OSError, ValueError... on a damaged header
        raise RunError(f"cannot read weights from {path} ({exc}); the file is damaged") from None


def read_run_config(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and check ``RUN/config.json``."""
    directory = Path(directory)
    path = directory / CONFIG_FILE
    if not directory.is_dir():
        raise RunError(f"run directory not found: {directory}; train one with `lmforge train`")
    if not path.is_file():
        raise RunError(
            f"{directory} is not an lmforge run (no {CONFIG_FILE}); give the --out directory "
            "of `lmforge train`"
        )
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RunError(f"{path} is damaged ({exc}); the run cannot be read") from None
    if not isinstance(config, dict):
        raise RunError(f"{path} is damaged (it holds no table of settings); train the run again")
    schema = config.get("schema_version")
    if schema != SCHEMA_VERSION:
        raise RunError(
            f"{path} has run schema version {schema!r}; this lmforge reads version {SCHEMA_VERSION}"
        )
    try:
        _check_run_config(config)
    except ConfigError as exc:
        raise RunError(
            f"{path} is damaged or was edited: {exc}; put back the file the run wrote, "
            "or train again"
        ) from None
    return config


def _check_run_config(config: dict[str, Any]) -> None:
    """Raise a :class:`ConfigError` for a missing entry or a value of the wrong type."""
    for key in ("model", "run"):
        if not isinstance(config.get(key), dict):
            raise ConfigError(f"the {key!r} entry is missing or not a table")
    model = config["model"]
    vocab_size = model.get("vocab_size")
    if not isinstance(vocab_size, int) or isinstance(vocab_size, bool) or vocab_size < 1:
        raise ConfigError(f"model vocab_size must be a positive integer, not {vocab_size!r}")
    check_model_options(model)
    RunConfig.from_dict(config["run"])


def load_run(
    directory: str | os.PathLike[str], checkpoint: str = "best", device: str | None = None
) -> Run:
    """Load a run for sampling or evaluation: ``checkpoint`` is ``best`` (lowest val loss,
    falling back to ``final`` if none) or ``final`` (the latest weights)."""
    directory = Path(directory)
    config = read_run_config(directory)
    if checkpoint not in CHECKPOINTS:
        raise RunError(f"unknown checkpoint {checkpoint!r}; choose best or final")
    weights = directory / CHECKPOINTS[checkpoint]
    if checkpoint == "best" and not weights.is_file():
        weights, checkpoint = directory / FINAL_WEIGHTS, "final"
    if not weights.is_file():
        raise RunError(
            f"{directory} has no weights yet ({weights.name} is missing); wait for the first "
            "evaluation of the run, or train again"
        )
    tokenizer = load_tokenizer(directory / TOKENIZER_FILE)
    model_vocab = config["model"]["vocab_size"]
    if tokenizer.vocab_size != model_vocab:
        raise RunError(
            f"{directory / TOKENIZER_FILE} has {tokenizer.vocab_size} tokens but the model in "
            f"{CONFIG_FILE} has {model_vocab}; put back the run's own {TOKENIZER_FILE}"
        )
    try:
        model = model_from_config(config["model"])
    except (ConfigError, TypeError, ValueError, RuntimeError, OverflowError, MemoryError) as exc:
        raise RunError(
            f"{directory / CONFIG_FILE} describes a model that cannot be built ({exc}); "
            "put back the file the run wrote, or train again"
        ) from None
    load_weights(model, weights)
    target = pick_device(device)
    model.to(target).eval()
    return Run(directory, config, tokenizer, model, target, checkpoint)
