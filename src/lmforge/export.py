"""Export a trained Transformer to a Hugging Face ``transformers`` folder (GPT-2 format).

    OUT_DIR/config.json             GPT2Config: the shape, exact GELU, LayerNorm epsilon
    OUT_DIR/generation_config.json  the token ids generation needs
    OUT_DIR/model.safetensors       the weights under GPT-2's names
    OUT_DIR/tokenizer.json          the run's tokenizer (char, word or BPE) as a fast
    OUT_DIR/tokenizer_config.json   tokenizer, with :mod:`lmforge.tokenizers.export`

lmforge's Transformer is GPT-2's architecture with GPT-2's module names and weight layouts
(the block matrices are [in, out], GPT-2's ``Conv1D``), so the weights are written as they are.
A model without biases gets zero biases (the same function); an untied output matrix is
written as ``lm_head.weight``. Rotary positions have no GPT-2 counterpart and are refused.

>>> export_hf("runs/gpt", "hf/gpt")
>>> from transformers import AutoTokenizer, GPT2LMHeadModel
>>> GPT2LMHeadModel.from_pretrained("hf/gpt"), AutoTokenizer.from_pretrained("hf/gpt")
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from lmforge.errors import LmforgeError
from lmforge.fileio import atomic_write_json, atomic_write_with
from lmforge.models.base import LanguageModel
from lmforge.runs import Run, load_run
from lmforge.tokenizers.base import Tokenizer
from lmforge.tokenizers.export import save_hf_tokenizer_dir

END_OF_TEXT = "<|endoftext|>"
LAYER_NORM_EPS = 1e-5  # torch.nn.LayerNorm's default, the value GPT-2 uses too
_CONV1D = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")


class ExportError(LmforgeError):
    """A run cannot be exported in the asked format."""


def check_exportable(model: LanguageModel) -> None:
    """Raise a one-line error unless ``model`` is a Transformer GPT-2 can represent."""
    if model.family != "transformer":
        raise ExportError(
            f"only Transformer runs export to Hugging Face (GPT-2); this run is a "
            f"{model.family} model; train one with --model transformer"
        )
    if model.config.position != "learned":
        raise ExportError(
            "GPT-2 has learned positions, but this Transformer uses rotary ones; train with "
            "--position learned to export it"
        )


def gpt2_state_dict(model: LanguageModel) -> dict[str, torch.Tensor]:
    """The model's weights under GPT-2's names, float32 on the CPU (zero biases added for a
    model without them); ``lm_head.weight`` only when it is not tied.

    >>> sorted(gpt2_state_dict(model))[:3]
    ['transformer.h.0.attn.c_attn.bias', 'transformer.h.0.attn.c_attn.weight', ...]
    """
    check_exportable(model)
    config = model.config
    tensors: dict[str, torch.Tensor] = {}
    for name, value in model.state_dict().items():
        if name == "lm_head.weight" and config.tie_weights:
            continue
        tensors[name] = value.detach().to("cpu", torch.float32).contiguous()
    if not config.bias:  # GPT-2 always has biases: zeros give the same function
        for i in range(config.n_layer):
            widths = {"attn.c_attn": 3 * config.n_embd, "mlp.c_fc": 4 * config.n_embd}
            for part in (*_CONV1D, "ln_1", "ln_2"):
                width = widths.get(part, config.n_embd)
                tensors[f"transformer.h.{i}.{part}.bias"] = torch.zeros(width)
        tensors["transformer.ln_f.bias"] = torch.zeros(config.n_embd)
    return tensors


def gpt2_config(model: LanguageModel, eos_token_id: int | None = None) -> dict[str, Any]:
    """The ``config.json`` of ``transformers.GPT2Config`` for this model's shape.

    >>> gpt2_config(model)["activation_function"]
    'gelu'
    """
    check_exportable(model)
    config = model.config
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": config.vocab_size,
        "n_positions": config.block_size,
        "n_ctx": config.block_size,
        "n_embd": config.n_embd,
        "n_layer": config.n_layer,
        "n_head": config.n_head,
        "n_inner": None,
        "activation_function": "gelu",  # exact GELU, as nn.GELU()
        "resid_pdrop": config.dropout,
        "embd_pdrop": config.dropout,
        "attn_pdrop": config.dropout,
        "layer_norm_epsilon": LAYER_NORM_EPS,
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "tie_word_embeddings": config.tie_weights,
        "bos_token_id": eos_token_id,
        "eos_token_id": eos_token_id,
        "use_cache": True,
        "torch_dtype": "float32",
    }


def export_hf(
    run: Run | str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    checkpoint: str = "best",
    overwrite: bool = False,
) -> Path:
    """Write ``run`` (a :class:`~lmforge.runs.Run` or its directory) as a folder that
    ``transformers`` loads with ``from_pretrained``; returns the folder."""
    if not isinstance(run, Run):
        run = load_run(run, checkpoint=checkpoint, device="cpu")
    check_exportable(run.model)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out} is a file; give a directory to export into")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ExportError(f"{out} is not empty; choose another directory or pass --overwrite")
    out.mkdir(parents=True, exist_ok=True)
    save_hf_tokenizer_dir(run.tokenizer, out, model_max_length=run.model.max_context)
    write_hf_model(run.model, out, end_of_text_id(run.tokenizer))
    return out


def end_of_text_id(tokenizer: Tokenizer) -> int | None:
    """The id of ``<|endoftext|>`` when the tokenizer has it as a special token (GPT-2's
    beginning- and end-of-text token), else None.

    >>> end_of_text_id(train_tokenizer("bpe", text, vocab_size=300, special=["<|endoftext|>"]))
    300
    """
    special = getattr(tokenizer, "special_tokens", {})
    return special.get(END_OF_TEXT)


def write_hf_model(model: LanguageModel, out: Path, eos_token_id: int | None = None) -> None:
    """Write ``config.json``, ``generation_config.json`` and ``model.safetensors``."""
    from safetensors.torch import save_file

    tensors = gpt2_state_dict(model)
    atomic_write_with(
        out / "model.safetensors",
        lambda tmp: save_file(tensors, str(tmp), metadata={"format": "pt"}),
    )
    atomic_write_json(out / "config.json", gpt2_config(model, eos_token_id))
    atomic_write_json(
        out / "generation_config.json",
        {"bos_token_id": eos_token_id, "eos_token_id": eos_token_id, "pad_token_id": None},
    )
