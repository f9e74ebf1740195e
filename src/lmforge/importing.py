"""Import a Hugging Face model folder as an ordinary lmforge run.

    DIR/config.json                   model_type gpt2, llama, mistral or qwen2
    DIR/model.safetensors             or model.safetensors.index.json and its shards,
                                      or pytorch_model.bin (read with weights_only=True only)
    DIR/tokenizer.json                + tokenizer_config.json (BOS/EOS), read by
                                      lmforge.tokenizers.hf.load_hf_tokenizer
        ─► RUN/config.json            a trained run's config.json, plus a "source" entry
           RUN/tokenizer.json         the model's own tokenizer (kind "hf")
           RUN/model.safetensors      the weights in lmforge's names and layouts

The model's config and weights are read by :mod:`lmforge.hf_checkpoint` (one tensor at a
time; safetensors files are memory-mapped, so an import holds about one copy of the model), the
tokenizer by :func:`lmforge.tokenizers.hf.load_hf_tokenizer`. The run appears whole or not at
all: it is written to a temporary folder beside RUN and renamed into place.

>>> import_hf("hf/SmolLM-135M", "runs/smollm")
PosixPath('runs/smollm')
>>> load_run("runs/smollm").model.config.n_kv_head
3
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from lmforge.hf_checkpoint import (
    NOT_WEIGHTS,
    ModelImportError,
    WeightFiles,
    gpt2_tensors,
    llama_tensors,
    read_model_options,
    refuse,
    used_names,
    weight_files,
)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# the training window and batch an imported run's evaluation uses (models may allow far more)
IMPORTED_WINDOW = 1024
IMPORTED_BATCH = 8


def read_hf_model(directory: Path, dtype: str = "float32") -> tuple[Any, dict[str, Any]]:
    """(the lmforge Transformer of a Hugging Face folder with its weights in ``dtype``, the
    folder's config.json), for writing to a run: the model is built on the meta device and
    only its weights are real (rotary tables are not; :func:`lmforge.runs.load_run` the run
    to use the model)."""
    from lmforge.models.base import build_model

    if dtype not in DTYPES:
        raise ModelImportError(f"--dtype must be {', '.join(DTYPES)}, not {dtype!r}")
    hf, options = read_model_options(directory)
    with torch.device("meta"):  # shapes only: the weights come from the files
        model = build_model("transformer", **options)
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    if options["tie_weights"]:
        expected.pop("lm_head.weight", None)
    convert = gpt2_tensors if hf["model_type"] == "gpt2" else llama_tensors
    tensors: dict[str, torch.Tensor] = {}
    with WeightFiles(directory) as weights:
        unused = sorted(weights.names() - used_names(hf["model_type"], weights, options))
        unused = [n for n in unused if not n.endswith(NOT_WEIGHTS)]
        if unused and not (options["tie_weights"] and unused == ["lm_head.weight"]):
            raise refuse(hf["model_type"], f"weights lmforge has no place for, e.g. {unused[0]}")
        for name, tensor in convert(weights, options):
            if name not in expected:
                raise refuse(hf["model_type"], f"weights lmforge has no place for ({name})")
            if tuple(tensor.shape) != expected[name]:
                raise ModelImportError(
                    f"{name} in {directory} has shape {list(tensor.shape)} but config.json "
                    f"makes it {list(expected[name])}; the weights and config.json do not "
                    "match: fetch the model again"
                )
            tensors[name] = tensor.to(DTYPES[dtype]).contiguous()
    missing = sorted(set(expected) - set(tensors))
    if missing:
        raise ModelImportError(
            f"the weights in {directory} lack {missing[0]}; they are incomplete: "
            "fetch the model again"
        )
    model.load_state_dict(tensors, strict=False, assign=True)
    if options["tie_weights"]:
        model.lm_head.weight = model.transformer.wte.weight
    return model, hf


# --- the run ---------------------------------------------------------------------------------


def import_hf(
    directory: str | os.PathLike[str],
    out: str | os.PathLike[str],
    dtype: str = "float32",
    overwrite: bool = False,
) -> Path:
    """Write the Hugging Face model folder ``directory`` as the lmforge run ``out``: every
    command (sample, score, eval, serve, export, train --init-from) then works on it.
    ``directory`` may be ``hf:NAME`` to download NAME from the Hugging Face hub first.

    The run appears whole or not at all (written to a temporary folder, then renamed), and an
    existing run is replaced only with ``overwrite``."""
    from lmforge.runs import CONFIG_FILE

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ModelImportError(f"--out {out} is a file; choose a directory for the run")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        what = "already holds a run" if (out / CONFIG_FILE).is_file() else "is not empty"
        raise ModelImportError(f"{out} {what}; choose another --out or pass --overwrite")
    source = resolve_source(directory)
    # the config and the tokenizer are checked before the (big) weights are read
    tokenizer = _load_tokenizer(source, read_model_options(source)[1]["vocab_size"])
    model, hf = read_hf_model(source, dtype)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.import-", dir=out.parent))
    try:
        _write_run(staging, out, model, tokenizer, _source_entry(directory, source, hf, dtype))
        _move_into_place(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def resolve_source(directory: str | os.PathLike[str]) -> Path:
    """The local folder of ``directory``; ``hf:NAME`` is downloaded with ``huggingface_hub``
    first (into its cache)."""
    text = os.fspath(directory)
    if not text.startswith("hf:"):
        return Path(text)
    name = text[3:]
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise ModelImportError(
            f"hf:{name} needs the huggingface_hub package (pip install huggingface_hub), "
            "or download the folder yourself and give its path"
        ) from None
    try:
        folder = Path(snapshot_download(name, allow_patterns=["*.json", "*.safetensors"]))
        if not any(folder.glob("*.safetensors")):  # an older repository: PyTorch files only
            folder = Path(snapshot_download(name, allow_patterns=["pytorch_model*.bin"]))
    except Exception as exc:  # offline, unknown repository, gated model...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelImportError(
            f"cannot download hf:{name} ({first}); check the name and the network, or give "
            "a local folder"
        ) from None
    return folder


def _load_tokenizer(directory: Path, vocab_size: int) -> Any:
    from lmforge.tokenizers.hf import load_hf_tokenizer

    tokenizer = load_hf_tokenizer(directory)
    if tokenizer.vocab_size > vocab_size:
        raise ModelImportError(
            f"the tokenizer in {directory} has {tokenizer.vocab_size} tokens but the model "
            f"only {vocab_size}; the folder mixes files of two models"
        )
    if tokenizer.vocab_size < vocab_size:  # Qwen2 pads its embedding to a round size
        raise ModelImportError(
            f"the model in {directory} has {vocab_size} embedding rows but its tokenizer only "
            f"{tokenizer.vocab_size} tokens (a padded vocabulary); lmforge runs need the two "
            "equal, so this model cannot be imported yet"
        )
    return tokenizer


def _source_entry(
    given: str | os.PathLike[str], directory: Path, hf: dict[str, Any], dtype: str
) -> dict[str, Any]:
    """Where an imported run came from (``source`` in its config.json)."""
    name = os.fspath(given)
    return {
        "format": "huggingface",
        "path": name if name.startswith("hf:") else str(directory.resolve()),
        "model_type": hf["model_type"],
        "architectures": hf.get("architectures"),
        "weights": [path.name for path in weight_files(directory)],
        "dtype": dtype,
    }


def imported_run_config(model: Any, tokenizer: Any, out: Path, source: dict[str, Any]) -> dict:
    """The ``config.json`` of an imported run: what a trained run's holds (see
    :func:`lmforge.training.run_dir.run_config_json`), with no corpus, and ``source``."""
    from lmforge.config import RunConfig, TokenizerConfig, TrainConfig
    from lmforge.runs import TOKENIZER_FILE
    from lmforge.training.run_dir import run_header

    window = min(model.config.block_size, IMPORTED_WINDOW)
    settings = RunConfig(
        out=str(out),
        tokenizer=TokenizerConfig(kind=tokenizer.kind, file=str(out.resolve() / TOKENIZER_FILE)),
        model=model.config_dict(),
        train=TrainConfig(block_size=window, batch_size=IMPORTED_BATCH),
    )
    return {
        **run_header(model, tokenizer, window),
        "corpus": None,
        "data": {},
        "token_stream": None,
        "world_size": 1,
        "run": settings.to_dict(),
        "source": source,
    }


def _write_run(staging: Path, out: Path, model: Any, tokenizer: Any, source: dict) -> None:
    from lmforge.fileio import atomic_write_json
    from lmforge.runs import CONFIG_FILE, FINAL_WEIGHTS, TOKENIZER_FILE, save_weights

    save_weights(model, staging / FINAL_WEIGHTS, source=source["path"])
    tokenizer.save(staging / TOKENIZER_FILE)
    atomic_write_json(staging / CONFIG_FILE, imported_run_config(model, tokenizer, out, source))


def _move_into_place(staging: Path, out: Path) -> None:
    """Rename ``staging`` to ``out``; an existing ``out`` is moved aside first and removed
    only once the new run is in place."""
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.replace(out, old / out.name)
    try:
        os.replace(staging, out)
    except OSError:
        if old is not None:  # put the old run back
            os.replace(old / out.name, out)
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
