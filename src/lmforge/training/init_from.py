"""Fine-tuning: a new run that starts from the weights of another (``--init-from``).

The source is an lmforge run directory or a Hugging Face model folder (imported once with
:func:`lmforge.importing.import_hf` into the cache). The new run takes the source's model
configuration and its tokenizer (no tokenizer is learned) and its weights (``best``, else
``final``); its training settings come from the flags and defaults as for any run. Model flags
that contradict the source's shape are an error; dropout may change.

>>> from lmforge.config import resolve_config
>>> config = resolve_config({"out": "runs/ft", "data": {"corpus": "verse.txt"},
...                          "train": {"init_from": "runs/shakespeare", "learning_rate": 3e-5}})
>>> config.model["family"], config.tokenizer.file
('transformer', 'runs/shakespeare/tokenizer.json')
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from torch import nn

from lmforge.config import TokenizerConfig
from lmforge.errors import ConfigError
from lmforge.fileio import cache_dir, file_lock

# model options a fine-tune may set differently from its source (they change no weight's shape)
FREE_MODEL_OPTIONS = frozenset({"dropout"})
# tokenizer options a fine-tune may set (how special-token text in its corpus is read)
FREE_TOKENIZER_OPTIONS = frozenset({"special_text"})
IMPORTED = "imported"


def source_run(init_from: str) -> Path:
    """The lmforge run directory ``--init-from`` names: the run itself, or the run imported
    from a Hugging Face model folder (imported once, then reused from the cache)."""
    path = Path(init_from)
    config = _read_json(path / "config.json")
    if config is None:
        raise ConfigError(
            f"--init-from {init_from}: neither an lmforge run nor a Hugging Face model folder "
            "(no readable config.json); give the --out directory of a run or a folder "
            "with config.json and model.safetensors"
        )
    if "schema_version" in config or "model_type" not in config:
        return path  # an lmforge run (read_run_config reports what is wrong with it)
    return _imported(path)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _imported(folder: Path) -> Path:
    """The lmforge run made from the Hugging Face folder ``folder``, imported on first use
    into ``<cache>/imported/<key>`` (the key changes when any file of the folder does). One
    process imports; the others (torchrun ranks) wait for it and reuse its run."""
    try:
        from lmforge.importing import import_hf
    except ImportError:
        raise ConfigError(
            f"--init-from {folder} is a Hugging Face folder, and this lmforge cannot import "
            "one; convert it with `lmforge import` first, then give --init-from the run"
        ) from None
    root = cache_dir() / IMPORTED
    target = root / _folder_key(folder)
    if (target / "config.json").is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    with file_lock(root / f".{target.name}.lock"):
        if (target / "config.json").is_file():  # another process imported it meanwhile
            return target
        scratch = Path(tempfile.mkdtemp(prefix=".partial-", dir=root))
        try:
            made = import_hf(folder, scratch / "run")
            os.replace(made, target)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return target


def _folder_key(folder: Path) -> str:
    """A name for ``folder``'s current contents: its path and each file's name, size and
    modification time."""
    digest = hashlib.sha256(str(folder.resolve()).encode())
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        stat = path.stat()
        digest.update(f"{path.relative_to(folder)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:24]


def source_weights(run_dir: Path) -> Path:
    """The weights a fine-tune starts from: the run's best, else its final ones."""
    from lmforge.runs import BEST_WEIGHTS, FINAL_WEIGHTS

    for name in (BEST_WEIGHTS, FINAL_WEIGHTS):
        if (run_dir / name).is_file():
            return run_dir / name
    raise ConfigError(
        f"--init-from {run_dir} has no weights yet ({FINAL_WEIGHTS} is missing); wait for its "
        "first evaluation, or give another run"
    )


def init_from_settings(layered: dict[str, Any]) -> dict[str, Any]:
    """The layered settings of a run with ``train.init_from`` given: the source's model
    configuration (less its vocabulary size, which the tokenizer gives) and tokenizer file
    put in; given model and tokenizer settings that contradict the source are an error."""
    from lmforge.runs import TOKENIZER_FILE, read_run_config
    from lmforge.tokenizers.base import load_tokenizer

    init_from = layered["train"]["init_from"]
    if not isinstance(init_from, str) or not init_from:
        raise ConfigError(f"--init-from must name a run directory, not {init_from!r}")
    run_dir = source_run(init_from)
    source_model = dict(read_run_config(run_dir)["model"])
    vocab_size = source_model.pop("vocab_size")
    tokenizer_file = run_dir / TOKENIZER_FILE
    tokenizer = load_tokenizer(tokenizer_file)
    if tokenizer.vocab_size != vocab_size:
        raise ConfigError(
            f"--init-from {init_from}: its {TOKENIZER_FILE} has {tokenizer.vocab_size} tokens "
            f"but its model {vocab_size}; put back the run's own {TOKENIZER_FILE}"
        )
    given_model = dict(layered.get("model", {}))
    preset = given_model.pop("preset", None)
    if preset is not None:
        from lmforge.config import family_preset

        # a preset brings its training settings; its shape must be the source's
        shape = family_preset(source_model.get("family", "lstm"), preset)["model"]
        _check_model(init_from, source_model, shape, "--preset")
    _check_model(init_from, source_model, given_model, None)
    _check_tokenizer(init_from, layered.get("tokenizer", {}), str(tokenizer_file), tokenizer.kind)
    model = {**source_model, **{k: v for k, v in given_model.items() if k in FREE_MODEL_OPTIONS}}
    if preset is not None:
        model["preset"] = preset
    tokenizer_settings = {
        **layered.get("tokenizer", {}),
        "kind": tokenizer.kind,
        "file": str(tokenizer_file),
    }
    return {**layered, "model": model, "tokenizer": tokenizer_settings}


def _check_model(
    init_from: str, source: dict[str, Any], given: dict[str, Any], via: str | None
) -> None:
    for name, value in given.items():
        if name in FREE_MODEL_OPTIONS or source.get(name) == value:
            continue
        flag = via or "--" + ("model" if name == "family" else name.replace("_", "-"))
        setting = f"{flag} {value}" if via is None else f"{flag} ({name} {value})"
        raise ConfigError(
            f"{setting} contradicts the model of --init-from {init_from} ({name} "
            f"{source.get(name)}); a fine-tune keeps its source's shape: drop {flag}"
        )


def _check_tokenizer(init_from: str, given: dict[str, Any], source_file: str, kind: str) -> None:
    defaults = dataclasses.asdict(TokenizerConfig())
    # a repeated fine-tune (--config of its config.json) names the source's file and kind
    source = {"file": source_file, "kind": kind}
    for name, value in given.items():
        if name in FREE_TOKENIZER_OPTIONS or value in (defaults.get(name, value), source.get(name)):
            continue
        flag = {"kind": "--tokenizer", "file": "--tokenizer-file"}.get(
            name, "--" + name.replace("_", "-")
        )
        raise ConfigError(
            f"{flag} does not apply with --init-from {init_from}: a fine-tune uses its "
            f"source's tokenizer; drop {flag}"
        )


def load_initial_weights(model: nn.Module, init_from: str) -> None:
    """Load the weights ``--init-from`` names into ``model`` (built from the same config)."""
    from lmforge.runs import load_weights

    load_weights(model, source_weights(source_run(init_from)))


def freeze(model: nn.Module, parts: list[str]) -> None:
    """Hold ``parts`` of ``model`` fixed: ``embeddings`` is every embedding table (tokens, and
    learned positions; with tied weights the token table is the output layer too); the parts
    were checked by :meth:`lmforge.config.TrainConfig.validate`."""
    if "embeddings" in parts:
        for module in model.modules():
            if isinstance(module, nn.Embedding):
                module.weight.requires_grad_(False)
    if not any(p.requires_grad for p in model.parameters()):
        raise ConfigError(
            f"--freeze {' '.join(parts)} leaves nothing of this model to train (its only "
            "weights are embeddings); drop --freeze"
        )
