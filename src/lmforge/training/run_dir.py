"""The run directory's lifecycle: start or refuse one, clear it for --overwrite, remove the
trainer's own torn writes, write ``config.json``, and read back the configuration to resume."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lmforge import __version__
from lmforge.config import RunConfig
from lmforge.data.stream import TokenStream
from lmforge.errors import ConfigError, RunError
from lmforge.fileio import atomic_write_json, temporary_prefix
from lmforge.models.base import LanguageModel
from lmforge.runs import (
    BEST_WEIGHTS,
    CONFIG_FILE,
    FINAL_WEIGHTS,
    METRICS_FILE,
    SCHEMA_VERSION,
    TOKENIZER_FILE,
    TRAINER_STATE,
    read_run_config,
)
from lmforge.tokenizers.base import Tokenizer

# settings that may change on --resume without breaking exact resumption
RESUMABLE_SETTINGS = frozenset(
    {"max_steps", "time_budget", "eval_interval", "log_interval", "device"}
)


def check_run_dir(run_dir: Path, resume: bool, overwrite: bool) -> None:
    """Refuse to resume a directory without a run, or to start over an existing run."""
    exists = (run_dir / CONFIG_FILE).is_file()
    if resume and not exists:
        raise RunError(f"cannot resume {run_dir}: it holds no run; start one with --out {run_dir}")
    if not resume and exists and not overwrite:
        raise RunError(
            f"{run_dir} already holds a run; continue it with --resume {run_dir}, choose another "
            "--out, or pass --overwrite to replace it"
        )
    if run_dir.exists() and not run_dir.is_dir():
        raise RunError(f"--out {run_dir} is a file; choose a directory")


def clear_run_dir(run_dir: Path) -> None:
    """Make ``run_dir`` and remove the checkpoints of a run being overwritten."""
    run_dir.mkdir(parents=True, exist_ok=True)
    for name in (BEST_WEIGHTS, FINAL_WEIGHTS, TRAINER_STATE, CONFIG_FILE):
        (run_dir / name).unlink(missing_ok=True)


# the files the trainer writes in a run directory
RUN_FILES = (BEST_WEIGHTS, FINAL_WEIGHTS, TRAINER_STATE, CONFIG_FILE, METRICS_FILE, TOKENIZER_FILE)


def remove_torn_writes(run_dir: Path) -> None:
    """Delete the temporary files a killed trainer left in ``run_dir`` while writing one of
    its own files (anything else in the directory is left alone)."""
    for name in RUN_FILES:
        # atomic_path's temporary names: the prefix, mkstemp's 8 random characters, ".tmp"
        for torn in run_dir.glob(f"{temporary_prefix(name)}{'?' * 8}.tmp"):
            torn.unlink(missing_ok=True)


def run_header(model: LanguageModel, tokenizer: Tokenizer, block_size: int) -> dict[str, Any]:
    """The entries every run's ``config.json`` opens with, trained or imported: schema and
    lmforge versions, the model, the vocabulary, the training window and the size."""
    return {
        "schema_version": SCHEMA_VERSION,
        "lmforge_version": __version__,
        "model": model.config_dict(),
        "vocab_size": tokenizer.vocab_size,
        "tokenizer_kind": tokenizer.kind,
        "block_size": block_size,
        "parameters": model.num_parameters(),
    }


def run_config_json(
    config: RunConfig,
    model: LanguageModel,
    tokenizer: Tokenizer,
    stream: TokenStream,
    world_size: int,
) -> dict[str, Any]:
    """The contents of ``config.json``."""
    return {
        **run_header(model, tokenizer, config.train.block_size),
        "corpus": config.data.corpus,
        "data": {
            split: {"tokens": stream.num_tokens(split), "chars": stream.num_chars(split)}
            for split in stream.splits
        },
        "token_stream": stream.directory.name,
        "world_size": world_size,
        "run": config.to_dict(),
    }


def write_run_config(run_dir: Path, contents: dict[str, Any]) -> None:
    """Write ``config.json`` atomically."""
    atomic_write_json(run_dir / CONFIG_FILE, contents)


def save_resumed_settings(run_dir: Path, config: RunConfig) -> None:
    """Record in ``config.json`` the settings a resume changed (``--max-steps``,
    ``--time-budget``, ...), so that the next resume continues with them."""
    saved = read_run_config(run_dir)
    settings = {**config.to_dict(), "out": saved["run"].get("out", str(run_dir))}
    if settings != saved["run"]:
        write_run_config(run_dir, {**saved, "run": settings})


def resume_config(run_dir: str | Path, overrides: dict[str, Any] | None = None) -> RunConfig:
    """The configuration of a saved run, with the few settings that may change on resume
    (``max_steps``, ``time_budget``, ``eval_interval``, ``log_interval``, ``device``)."""
    saved = read_run_config(run_dir)
    config = RunConfig.from_dict({**saved["run"], "out": str(run_dir)})
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if key not in RESUMABLE_SETTINGS:
            raise ConfigError(
                f"--{key.replace('_', '-')} cannot change when resuming (it would break exact "
                f"resumption); only {', '.join(sorted(RESUMABLE_SETTINGS))} can"
            )
        setattr(config.train, key, value)
    config.train.validate()
    return config
