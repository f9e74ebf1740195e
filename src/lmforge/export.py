"""Export a trained Transformer to a Hugging Face ``transformers`` folder.

    OUT_DIR/config.json             GPT2Config, GPTNeoXConfig, LlamaConfig or Qwen2Config
    OUT_DIR/generation_config.json  the token ids generation needs
    OUT_DIR/model.safetensors       the weights under that architecture's names
    OUT_DIR/tokenizer.json          the run's tokenizer (char, word or BPE) as a fast
    OUT_DIR/tokenizer_config.json   tokenizer, with :mod:`lmforge.tokenizers.export`

With learned positions lmforge's Transformer is GPT-2's architecture with GPT-2's module names
and weight layouts (the block matrices are [in, out], GPT-2's ``Conv1D``), so the weights are
written as they are (``GPT2LMHeadModel``).

With rotary positions it is GPT-NeoX's architecture (``GPTNeoXForCausalLM``) with sequential
residuals (``use_parallel_residual=False``) and rotary embeddings on the whole head
(``partial_rotary_factor=1``): both rotate the half-split pairs (x_i, x_{i+D/2}) with
θ_i = 10000^(-2i/D) (GPT-NeoX / Llama's ``rotate_half``, not GPT-J's interleaved pairs), both
use LayerNorm (not Llama's RMSNorm) and a 4·D exact-GELU MLP (not Llama's SwiGLU), so no
permutation of the query/key features is needed. Only the fused query/key/value matrix is
re-ordered: lmforge lays it out [q of every head, k ..., v ...], GPT-NeoX head by head
[q, k, v of head 0, ...]; and the [in, out] matrices are transposed to ``nn.Linear``'s
[out, in]. Llama itself (RMSNorm, SwiGLU) cannot represent this model exactly.

With RMSNorm, a SwiGLU MLP and rotary positions it is Llama's architecture
(``LlamaForCausalLM``, grouped-query attention and ``rope_theta`` included; the same
half-split rotary layout, so again no query/key permutation): the fused [q | k | v] and
[gate | up] matrices are cut into Llama's separate projections. Q/K/V biases with no other
bias are Qwen2's (``Qwen2ForCausalLM``); biases everywhere are Llama's ``attention_bias`` and
``mlp_bias``. :func:`hf_architecture` says which one a model becomes, and refuses the mixes no
Hugging Face architecture computes exactly (e.g. RMSNorm with a GELU MLP, or GQA with
LayerNorm) with the nearest settings that export.

A model without some biases gets zero biases where the architecture has them (the same
function); an untied output matrix is written too.

>>> export_hf("runs/gpt", "hf/gpt")
>>> from transformers import AutoModelForCausalLM, AutoTokenizer
>>> AutoModelForCausalLM.from_pretrained("hf/gpt"), AutoTokenizer.from_pretrained("hf/gpt")
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
_CONV1D = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
# transformers' names of the exact GELU (nn.GELU()) and the tanh form (GPT-2's "gelu_new")
_GELU_NAMES = {"gelu": "gelu", "gelu_tanh": "gelu_new"}


class ExportError(LmforgeError):
    """A run cannot be exported in the asked format."""


def check_exportable(model: LanguageModel) -> None:
    """Raise a one-line error unless ``model`` is a Transformer (every Transformer exports)."""
    if model.family != "transformer":
        raise ExportError(
            f"only Transformer runs export to Hugging Face; this run is a "
            f"{model.family} model; train one with --model transformer"
        )


def hf_architecture(config: Any) -> str:
    """The Hugging Face ``model_type`` that computes exactly what a Transformer of ``config``
    computes: ``gpt2``, ``gpt_neox``, ``llama`` or ``qwen2``; a one-line error when none
    does.

    >>> hf_architecture(TransformerConfig(vocab_size=9, position="rotary", norm="rmsnorm",
    ...                                   mlp="swiglu", bias=False, attn_bias=True))
    'qwen2'
    """
    gelu_mlp, grouped = config.mlp in ("gelu", "gelu_tanh"), config.kv_heads != config.n_head
    if config.position == "learned":
        if config.norm == "layernorm" and gelu_mlp and not grouped:
            return "gpt2"
        raise ExportError(
            "GPT-2, the Hugging Face architecture with learned positions, has LayerNorm, a GELU "
            "MLP and one key/value head per query head; export with --norm layernorm --mlp gelu "
            "and no --n-kv-head, or train with --position rotary --norm rmsnorm --mlp swiglu "
            "(Llama)"
        )
    if config.norm == "rmsnorm" and config.mlp == "swiglu":
        return "qwen2" if config.qkv_bias and not config.bias else "llama"
    if config.norm == "layernorm" and gelu_mlp and not grouped:
        return "gpt_neox"
    raise ExportError(
        f"no Hugging Face architecture computes --norm {config.norm} --mlp {config.mlp}"
        f"{' with --n-kv-head' if grouped else ''} with rotary positions exactly; the nearest "
        "that export are --norm rmsnorm --mlp swiglu (Llama, GQA allowed) and --norm layernorm "
        "--mlp gelu without --n-kv-head (GPT-NeoX)"
    )


def _check_gpt2(model: LanguageModel) -> None:
    check_exportable(model)
    if hf_architecture(model.config) != "gpt2":
        raise ExportError(
            "GPT-2 has learned positions, but this Transformer uses rotary ones; export it "
            "with hf_state_dict / hf_config instead"
        )


def hf_state_dict(model: LanguageModel) -> dict[str, torch.Tensor]:
    """The weights ``transformers`` loads, under the names of :func:`hf_architecture`'s
    architecture."""
    check_exportable(model)
    architecture = hf_architecture(model.config)
    if architecture == "gpt2":
        return gpt2_state_dict(model)
    if architecture == "gpt_neox":
        return neox_state_dict(model)
    return llama_state_dict(model)


def hf_config(model: LanguageModel, eos_token_id: int | None = None) -> dict[str, Any]:
    """The ``config.json`` for :func:`hf_state_dict`'s weights."""
    check_exportable(model)
    architecture = hf_architecture(model.config)
    if architecture == "gpt2":
        return gpt2_config(model, eos_token_id)
    if architecture == "gpt_neox":
        return neox_config(model, eos_token_id)
    return llama_config(model, eos_token_id)


def gpt2_state_dict(model: LanguageModel) -> dict[str, torch.Tensor]:
    """The model's weights under GPT-2's names, float32 on the CPU (zero biases added for a
    model without them); ``lm_head.weight`` only when it is not tied.

    >>> sorted(gpt2_state_dict(model))[:3]
    ['transformer.h.0.attn.c_attn.bias', 'transformer.h.0.attn.c_attn.weight', ...]
    """
    _check_gpt2(model)
    config = model.config
    tensors: dict[str, torch.Tensor] = {}
    for name, value in model.state_dict().items():
        if name == "lm_head.weight" and config.tie_weights:
            continue
        tensors[name] = value.detach().to("cpu", torch.float32).contiguous()
    if not config.bias:  # GPT-2 always has biases: zeros give the same function
        for i in range(config.n_layer):
            widths = {"attn.c_attn": 3 * config.n_embd, "mlp.c_fc": config.mlp_width}
            for part in (*_CONV1D, "ln_1", "ln_2"):
                width = widths.get(part, config.n_embd)
                tensors[f"transformer.h.{i}.{part}.bias"] = torch.zeros(width)
        tensors["transformer.ln_f.bias"] = torch.zeros(config.n_embd)
    return tensors


def _shared_settings(config: Any, eos_token_id: int | None) -> dict[str, Any]:
    """The ``config.json`` entries every exported architecture writes alike."""
    return {
        "initializer_range": 0.02,
        "tie_word_embeddings": config.tie_weights,
        "bos_token_id": eos_token_id,
        "eos_token_id": eos_token_id,
        "use_cache": True,
        "torch_dtype": "float32",
    }


def gpt2_config(model: LanguageModel, eos_token_id: int | None = None) -> dict[str, Any]:
    """The ``config.json`` of ``transformers.GPT2Config`` for this model's shape.

    >>> gpt2_config(model)["activation_function"]
    'gelu'
    """
    _check_gpt2(model)
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
        "n_inner": config.mlp_width,
        "activation_function": _GELU_NAMES[config.mlp],
        "resid_pdrop": config.dropout,
        "embd_pdrop": config.dropout,
        "attn_pdrop": config.dropout,
        "layer_norm_epsilon": config.norm_eps,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        **_shared_settings(config, eos_token_id),
    }


def neox_state_dict(model: LanguageModel) -> dict[str, torch.Tensor]:
    """A rotary Transformer's weights under GPT-NeoX's names and layouts, float32 on the CPU
    (zero biases where the model has none); ``embed_out.weight`` only when it is not tied.

    >>> neox_state_dict(model)["gpt_neox.layers.0.attention.query_key_value.weight"].shape
    torch.Size([384, 128])
    """
    _check_architecture(model, "gpt_neox")
    config = model.config
    d, heads = config.n_embd, config.n_head
    weights = _float32_weights(model)

    def bias(name: str, width: int) -> torch.Tensor:
        return weights.get(name, torch.zeros(width))

    # output feature (head h, part p of q/k/v, dim i) of GPT-NeoX is lmforge's p·D + h·D/H + i
    qkv_order = torch.arange(3 * d).view(3, heads, d // heads).transpose(0, 1).reshape(-1)
    tensors = {"gpt_neox.embed_in.weight": weights["transformer.wte.weight"]}
    for i in range(config.n_layer):
        ours, theirs = f"transformer.h.{i}.", f"gpt_neox.layers.{i}."
        linear = {
            "attn.c_attn": "attention.query_key_value",
            "attn.c_proj": "attention.dense",
            "mlp.c_fc": "mlp.dense_h_to_4h",
            "mlp.c_proj": "mlp.dense_4h_to_h",
        }
        for part, name in linear.items():
            weight = weights[ours + part + ".weight"].t()  # Conv1D [in, out] -> [out, in]
            b = bias(ours + part + ".bias", weight.shape[0])
            if part == "attn.c_attn":
                weight, b = weight[qkv_order], b[qkv_order]
            tensors[theirs + name + ".weight"] = weight
            tensors[theirs + name + ".bias"] = b
        for part, name in (("ln_1", "input_layernorm"), ("ln_2", "post_attention_layernorm")):
            tensors[theirs + name + ".weight"] = weights[ours + part + ".weight"]
            tensors[theirs + name + ".bias"] = bias(ours + part + ".bias", d)
    tensors["gpt_neox.final_layer_norm.weight"] = weights["transformer.ln_f.weight"]
    tensors["gpt_neox.final_layer_norm.bias"] = bias("transformer.ln_f.bias", d)
    if not config.tie_weights:
        tensors["embed_out.weight"] = weights["lm_head.weight"]
    return {k: v.contiguous() for k, v in tensors.items()}


def neox_config(model: LanguageModel, eos_token_id: int | None = None) -> dict[str, Any]:
    """The ``config.json`` of ``transformers.GPTNeoXConfig`` for a rotary Transformer.

    >>> neox_config(model)["use_parallel_residual"]
    False
    """
    _check_architecture(model, "gpt_neox")
    config = model.config
    return {
        "architectures": ["GPTNeoXForCausalLM"],
        "model_type": "gpt_neox",
        "vocab_size": config.vocab_size,
        "hidden_size": config.n_embd,
        "num_hidden_layers": config.n_layer,
        "num_attention_heads": config.n_head,
        "intermediate_size": config.mlp_width,
        "hidden_act": _GELU_NAMES[config.mlp],
        "max_position_embeddings": config.block_size,
        "use_parallel_residual": False,  # x + attn(ln_1(x)), then + mlp(ln_2(.))
        "attention_bias": True,  # zeros for a model without biases
        # the rotary settings, under transformers 5's names and under the older ones
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": config.rope_theta,
            "partial_rotary_factor": 1.0,
        },
        "rotary_pct": 1.0,
        "rotary_emb_base": config.rope_theta,
        "attention_dropout": config.dropout,
        "hidden_dropout": config.dropout,
        "layer_norm_eps": config.norm_eps,
        **_shared_settings(config, eos_token_id),
    }


def llama_state_dict(model: LanguageModel) -> dict[str, torch.Tensor]:
    """A Llama-style Transformer's weights under Llama's (and Qwen2's) names and layouts,
    float32 on the CPU: the fused [q | k | v] and [gate | up] matrices cut into
    ``q_proj``/``k_proj``/``v_proj`` and ``gate_proj``/``up_proj``, every matrix transposed to
    ``nn.Linear``'s [out, in]; biases as the architecture has them (zeros where lmforge has
    none); ``lm_head.weight`` only when it is not tied.

    >>> llama_state_dict(model)["model.layers.0.self_attn.k_proj.weight"].shape   # GQA
    torch.Size([32, 128])
    """
    check_exportable(model)
    architecture = hf_architecture(model.config)
    if architecture not in ("llama", "qwen2"):
        raise ExportError(
            f"this Transformer exports as {architecture}, not Llama; use hf_state_dict"
        )
    config = model.config
    d, kv_width, hidden = config.n_embd, config.kv_heads * config.head_size, config.mlp_width
    weights = _float32_weights(model)
    qkv_bias, other_bias = (True, False) if architecture == "qwen2" else (config.bias,) * 2

    def linear(ours: str, widths: list[int], names: list[str], with_bias: bool) -> None:
        matrix = weights[ours + ".weight"].t()  # Conv1D [in, out] -> [out, in]
        bias = weights.get(ours + ".bias", torch.zeros(matrix.shape[0]))
        for name, part, part_bias in zip(
            names, matrix.split(widths), bias.split(widths), strict=True
        ):
            tensors[name + ".weight"] = part
            if with_bias:
                tensors[name + ".bias"] = part_bias

    tensors = {"model.embed_tokens.weight": weights["transformer.wte.weight"]}
    for i in range(config.n_layer):
        ours, theirs = f"transformer.h.{i}.", f"model.layers.{i}."
        attn, mlp = theirs + "self_attn.", theirs + "mlp."
        qkv = [attn + "q_proj", attn + "k_proj", attn + "v_proj"]
        linear(ours + "attn.c_attn", [d, kv_width, kv_width], qkv, qkv_bias or other_bias)
        linear(ours + "attn.c_proj", [d], [attn + "o_proj"], other_bias)
        linear(
            ours + "mlp.c_fc", [hidden, hidden], [mlp + "gate_proj", mlp + "up_proj"], other_bias
        )
        linear(ours + "mlp.c_proj", [d], [mlp + "down_proj"], other_bias)
        tensors[theirs + "input_layernorm.weight"] = weights[ours + "ln_1.weight"]
        tensors[theirs + "post_attention_layernorm.weight"] = weights[ours + "ln_2.weight"]
    tensors["model.norm.weight"] = weights["transformer.ln_f.weight"]
    if not config.tie_weights:
        tensors["lm_head.weight"] = weights["lm_head.weight"]
    return {k: v.contiguous() for k, v in tensors.items()}


def llama_config(model: LanguageModel, eos_token_id: int | None = None) -> dict[str, Any]:
    """The ``config.json`` of ``transformers.LlamaConfig`` (or ``Qwen2Config`` for Q/K/V
    biases alone) for a Llama-style Transformer.

    >>> llama_config(model)["num_key_value_heads"]
    2
    """
    check_exportable(model)
    config = model.config
    architecture = hf_architecture(config)
    if architecture not in ("llama", "qwen2"):
        raise ExportError(f"this Transformer exports as {architecture}, not Llama; use hf_config")
    settings: dict[str, Any] = {
        "architectures": ["Qwen2ForCausalLM" if architecture == "qwen2" else "LlamaForCausalLM"],
        "model_type": architecture,
        "vocab_size": config.vocab_size,
        "hidden_size": config.n_embd,
        "intermediate_size": config.mlp_width,
        "num_hidden_layers": config.n_layer,
        "num_attention_heads": config.n_head,
        "num_key_value_heads": config.kv_heads,
        "head_dim": config.head_size,
        "hidden_act": "silu",
        "max_position_embeddings": config.block_size,
        "rms_norm_eps": config.norm_eps,
        # transformers 5's name of the rotary settings, and the older one
        "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_theta},
        "rope_theta": config.rope_theta,
        "attention_dropout": config.dropout,
        **_shared_settings(config, eos_token_id),
    }
    if architecture == "qwen2":
        settings.update(use_sliding_window=False, sliding_window=None)
    else:
        settings.update(attention_bias=config.bias, mlp_bias=config.bias)
    return settings


def _check_architecture(model: LanguageModel, architecture: str) -> None:
    check_exportable(model)
    actual = hf_architecture(model.config)
    if actual != architecture:
        raise ExportError(
            f"this Transformer exports as {actual}, not {architecture}; use hf_state_dict"
        )


def _float32_weights(model: LanguageModel) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", torch.float32) for k, v in model.state_dict().items()}


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
    """The tokenizer's end-of-text id: its EOS for a model's own (``hf``) tokenizer, else
    ``<|endoftext|>`` when it has it as a special token (GPT-2's beginning- and end-of-text
    token), else None.

    >>> end_of_text_id(train_tokenizer("bpe", text, vocab_size=300, special=["<|endoftext|>"]))
    300
    """
    eos_id = getattr(tokenizer, "eos_id", None)  # an imported model's tokenizer names its EOS
    if eos_id is not None:
        return eos_id
    special = getattr(tokenizer, "special_tokens", {})
    return special.get(END_OF_TEXT)


def write_hf_model(model: LanguageModel, out: Path, eos_token_id: int | None = None) -> None:
    """Write ``config.json``, ``generation_config.json`` and ``model.safetensors``."""
    from safetensors.torch import save_file

    tensors = hf_state_dict(model)
    atomic_write_with(
        out / "model.safetensors",
        lambda tmp: save_file(tensors, str(tmp), metadata={"format": "pt"}),
    )
    atomic_write_json(out / "config.json", hf_config(model, eos_token_id))
    atomic_write_json(
        out / "generation_config.json",
        {"bos_token_id": eos_token_id, "eos_token_id": eos_token_id, "pad_token_id": None},
    )
