"""Reading a Hugging Face model folder: its config.json as lmforge Transformer options, its
weight files one tensor at a time, and each architecture's tensors under lmforge's names.

    config.json ─► model_options: GPT-2 → learned positions, LayerNorm, biases, (tanh) GELU;
                   Llama / Mistral / Qwen2 → rotary, RMSNorm, SwiGLU, grouped-query attention
    model.safetensors | model.safetensors.index.json + shards | pytorch_model.bin
                ─► WeightFiles.get(name) ─► gpt2_tensors / llama_tensors ─► (lmforge name, tensor)

GPT-2's weights keep their names and [in, out] ``Conv1D`` layout. Llama's ``nn.Linear``
weights [out, in] are transposed to [in, out]; q, k, v are fused into ``attn.c_attn`` ([q of
every head, k of every key/value head, v ...]) and gate, up into ``mlp.c_fc`` ([gate | up]).
Both use the half-split rotary layout (``rotate_half``), so no permutation of the query/key
features is needed. What lmforge cannot represent exactly (rope scaling, a sliding window
shorter than the context, other activations, tensors it has no place for) is refused with a
one-line error rather than imported approximately.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from lmforge.errors import LmforgeError

MODEL_TYPES = ("gpt2", "llama", "mistral", "qwen2")
SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
PYTORCH_BIN = "pytorch_model.bin"
PYTORCH_BIN_INDEX = "pytorch_model.bin.index.json"
# tensors some checkpoints carry that are not weights: attention masks, rotary tables
NOT_WEIGHTS = (".attn.bias", ".attn.masked_bias", "rotary_emb.inv_freq")
_GELU = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh"}


class ModelImportError(LmforgeError):
    """A Hugging Face folder cannot be imported exactly."""


# --- config.json -----------------------------------------------------------------------------


def read_hf_config(directory: Path) -> dict[str, Any]:
    """``DIR/config.json`` as a dictionary, with one-line errors."""
    if not directory.is_dir():
        raise ModelImportError(
            f"model folder not found: {directory}; give a Hugging Face model directory "
            "(with config.json and the weights)"
        )
    path = directory / "config.json"
    if not path.is_file():
        raise ModelImportError(
            f"{directory} has no config.json; give the folder save_pretrained wrote "
            "(or that the Hugging Face hub holds)"
        )
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelImportError(f"{path} is not valid JSON ({exc}); fix or fetch it again") from None
    if not isinstance(config, dict):
        raise ModelImportError(f"{path} holds no table of settings; fetch it again")
    return config


def model_options(hf: dict[str, Any]) -> dict[str, Any]:
    """The lmforge Transformer options of a Hugging Face ``config.json`` (only the ones that
    differ from the Transformer's defaults, besides the shape).

    >>> model_options({"model_type": "gpt2", "n_layer": 12, "n_head": 12, "n_embd": 768,
    ...                "n_positions": 1024, "vocab_size": 50257})["mlp"]
    'gelu_tanh'
    """
    model_type = hf.get("model_type")
    if model_type == "gpt2":
        return _gpt2_options(hf)
    if model_type in ("llama", "mistral", "qwen2"):
        return _llama_options(hf)
    raise ModelImportError(
        f"model_type {model_type!r} cannot be imported; lmforge imports "
        f"{', '.join(MODEL_TYPES)} (GPT-2 and Llama-family models)"
    )


def _field(hf: dict[str, Any], *names: str, default: Any = None) -> Any:
    """The first of ``names`` present in ``hf``; an error when none is and no default."""
    for name in names:
        if hf.get(name) is not None:
            return hf[name]
    if default is None:
        raise ModelImportError(
            f"config.json of this {hf.get('model_type')} model has no {names[0]}; "
            "the file is incomplete: fetch it again"
        )
    return default


def refuse(model_type: str, what: str) -> ModelImportError:
    """The error for a feature of ``model_type`` that lmforge cannot represent exactly."""
    return ModelImportError(
        f"this {model_type} model uses {what}, which lmforge's Transformer cannot represent "
        "exactly; it cannot be imported"
    )


def _gpt2_options(hf: dict[str, Any]) -> dict[str, Any]:
    n_embd = _field(hf, "n_embd", "hidden_size")
    activation = hf.get("activation_function", "gelu_new")
    if activation not in _GELU:
        raise refuse("gpt2", f"activation {activation!r} (lmforge has gelu and gelu_new)")
    for flag, expected, what in (
        ("scale_attn_by_inverse_layer_idx", False, "attention scaled by 1/layer index"),
        ("scale_attn_weights", True, "unscaled attention scores"),
        ("add_cross_attention", False, "cross-attention"),
    ):
        if hf.get(flag, expected) != expected:
            raise refuse("gpt2", what)
    options: dict[str, Any] = {
        "vocab_size": _field(hf, "vocab_size"),
        "n_layer": _field(hf, "n_layer", "num_hidden_layers"),
        "n_head": _field(hf, "n_head", "num_attention_heads"),
        "n_embd": n_embd,
        "block_size": _field(hf, "n_positions", "max_position_embeddings"),
        "bias": True,
        "tie_weights": bool(hf.get("tie_word_embeddings", True)),
        "position": "learned",
        "dropout": 0.0,
    }
    _set_unless_default(options, "mlp", _GELU[activation], "gelu")
    _set_unless_default(options, "norm_eps", float(hf.get("layer_norm_epsilon", 1e-5)), 1e-5)
    inner = hf.get("n_inner")
    _set_unless_default(options, "mlp_hidden", inner, 4 * n_embd)
    return options


def _llama_options(hf: dict[str, Any]) -> dict[str, Any]:
    model_type = hf["model_type"]
    n_embd = _field(hf, "hidden_size")
    n_head = _field(hf, "num_attention_heads")
    block_size = _field(hf, "max_position_embeddings")
    activation = hf.get("hidden_act", "silu")
    if activation != "silu":
        raise refuse(model_type, f"activation {activation!r} in its MLP (lmforge has SiLU)")
    head_dim = hf.get("head_dim")
    if head_dim is not None and head_dim * n_head != n_embd:
        raise refuse(model_type, f"head_dim {head_dim} ≠ hidden_size / heads")
    if hf.get("mlp_bias"):
        raise refuse(model_type, "biases in its MLP")
    if model_type != "qwen2" and hf.get("attention_bias"):
        raise refuse(model_type, "biases on the attention output")
    rope = hf.get("rope_parameters") or {}
    scaling = hf.get("rope_scaling") or {}
    for settings in (rope, scaling):
        kind = settings.get("rope_type", settings.get("type", "default"))
        if kind != "default":
            raise refuse(model_type, f"rope scaling {kind!r}")
    if rope.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0)) != 1.0:
        raise refuse(model_type, "rotary embeddings on part of each head")
    window = hf.get("sliding_window")
    uses_window = hf.get("use_sliding_window", model_type == "mistral")
    if uses_window and window is not None and window < block_size:
        raise refuse(
            model_type,
            f"a sliding attention window of {window} tokens shorter than its context {block_size}",
        )
    options: dict[str, Any] = {
        "vocab_size": _field(hf, "vocab_size"),
        "n_layer": _field(hf, "num_hidden_layers"),
        "n_head": n_head,
        "n_embd": n_embd,
        "block_size": block_size,
        "bias": False,
        "tie_weights": bool(hf.get("tie_word_embeddings", False)),
        "position": "rotary",
        "dropout": 0.0,
        "norm": "rmsnorm",
        "norm_eps": float(_field(hf, "rms_norm_eps", default=1e-6)),
        "mlp": "swiglu",
        "mlp_hidden": _field(hf, "intermediate_size"),
        "rope_theta": float(rope.get("rope_theta", hf.get("rope_theta", 10000.0))),
    }
    _set_unless_default(options, "n_kv_head", hf.get("num_key_value_heads"), n_head)
    if model_type == "qwen2":  # biases on q, k and v only
        options["attn_bias"] = True
    return options


def _set_unless_default(options: dict[str, Any], name: str, value: Any, default: Any) -> None:
    if value is not None and value != default:
        options[name] = value


# --- weights ---------------------------------------------------------------------------------


class WeightFiles:
    """The tensors of a model folder's weight files, read one at a time by name.

    >>> with WeightFiles(Path("hf/gpt2")) as weights:
    ...     weights.get("transformer.wte.weight").shape
    torch.Size([50257, 768])
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.files = weight_files(directory)
        self._where: dict[str, Path] = {}
        self._open: dict[Path, Any] = {}
        for path in self.files:
            for name in self._handle(path).keys():  # noqa: SIM118 (safe_open has no __iter__)
                self._where[name] = path

    def names(self) -> set[str]:
        """Every tensor name in the files."""
        return set(self._where)

    def get(self, name: str) -> torch.Tensor:
        """The tensor ``name`` (read now; safetensors copies it out of the memory map)."""
        if name not in self._where:
            raise ModelImportError(
                f"the weights in {self.directory} have no tensor {name}; they do not match "
                "config.json: fetch the model again"
            )
        handle = self._handle(self._where[name])
        if isinstance(handle, dict):
            return handle[name]
        return handle.get_tensor(name)

    def _handle(self, path: Path) -> Any:
        if path not in self._open:
            self._open[path] = _open_weights(path)
        return self._open[path]

    def close(self) -> None:
        """Release the open files."""
        self._open.clear()

    def __enter__(self) -> WeightFiles:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def weight_files(directory: Path) -> list[Path]:
    """The weight files of a model folder: ``model.safetensors``, the shards its index names,
    or ``pytorch_model.bin`` (or its shards), in that order of preference."""
    for single, index in ((SAFETENSORS, SAFETENSORS_INDEX), (PYTORCH_BIN, PYTORCH_BIN_INDEX)):
        if (directory / single).is_file():
            return [directory / single]
        if (directory / index).is_file():
            return _shards(directory / index)
    raise ModelImportError(
        f"{directory} has no weights ({SAFETENSORS}, {SAFETENSORS_INDEX} or {PYTORCH_BIN}); "
        "fetch the model's weight files too"
    )


def _shards(index: Path) -> list[Path]:
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        names = sorted(set(weight_map.values()))
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError):
        raise ModelImportError(
            f"{index} is damaged (no weight_map of tensor names to files); fetch it again"
        ) from None
    shards = [index.parent / name for name in names]
    missing = [path.name for path in shards if not path.is_file()]
    if missing:
        raise ModelImportError(
            f"{index.name} names {len(missing)} shard(s) that are missing, e.g. {missing[0]}; "
            "fetch every shard of the model"
        )
    return shards


def _open_weights(path: Path) -> Any:
    """A safetensors handle, or for a PyTorch file the dictionary of its tensors (loaded
    memory-mapped, with ``weights_only=True``: plain tensors only, never arbitrary code)."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            return safe_open(str(path), framework="pt")
        except Exception as exc:  # SafetensorError, OSError... on a damaged header
            raise ModelImportError(f"cannot read {path} ({exc}); the file is damaged") from None
    try:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:  # files of torch < 1.6 cannot be memory-mapped
            if "mmap" not in str(exc):
                raise
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise ModelImportError(
            f"{path} needs arbitrary Python code to load (a pickle beyond plain tensors), "
            "which lmforge never runs; use the model's model.safetensors instead"
        ) from None
    except Exception as exc:  # a truncated or foreign file
        raise ModelImportError(f"cannot read {path} ({exc}); the file is damaged") from None
    if not isinstance(state, dict) or not all(
        isinstance(value, torch.Tensor) for value in state.values()
    ):
        raise ModelImportError(
            f"{path} holds no state dict of tensors; give a folder save_pretrained wrote"
        )
    return state


def gpt2_tensors(
    weights: WeightFiles, options: dict[str, Any]
) -> Iterator[tuple[str, torch.Tensor]]:
    """(lmforge name, tensor) of a GPT-2 checkpoint: the same names (old checkpoints lack the
    ``transformer.`` prefix) and layouts."""
    prefix = "" if "transformer.wte.weight" in weights.names() else None
    for name in sorted(weights.names()):
        if name.endswith(NOT_WEIGHTS):
            continue
        if name == "lm_head.weight":
            if not options["tie_weights"]:
                yield name, weights.get(name)
            continue
        ours = name if prefix == "" else f"transformer.{name}"
        yield ours, weights.get(name)


def llama_tensors(
    weights: WeightFiles, options: dict[str, Any]
) -> Iterator[tuple[str, torch.Tensor]]:
    """(lmforge name, tensor) of a Llama, Mistral or Qwen2 checkpoint: ``nn.Linear`` weights
    transposed to [in, out], q/k/v fused into ``attn.c_attn``, gate/up fused into
    ``mlp.c_fc`` ([gate | up])."""
    yield "transformer.wte.weight", weights.get("model.embed_tokens.weight")
    for i in range(options["n_layer"]):
        theirs, ours = f"model.layers.{i}.", f"transformer.h.{i}."
        attn = theirs + "self_attn."
        qkv = [weights.get(f"{attn}{part}_proj.weight") for part in "qkv"]
        yield ours + "attn.c_attn.weight", torch.cat(qkv).t()
        if options.get("attn_bias"):
            biases = [weights.get(f"{attn}{part}_proj.bias") for part in "qkv"]
            yield ours + "attn.c_attn.bias", torch.cat(biases)
        yield ours + "attn.c_proj.weight", weights.get(attn + "o_proj.weight").t()
        mlp = theirs + "mlp."
        gate_up = [weights.get(f"{mlp}{part}_proj.weight") for part in ("gate", "up")]
        yield ours + "mlp.c_fc.weight", torch.cat(gate_up).t()
        yield ours + "mlp.c_proj.weight", weights.get(mlp + "down_proj.weight").t()
        yield ours + "ln_1.weight", weights.get(theirs + "input_layernorm.weight")
        yield ours + "ln_2.weight", weights.get(theirs + "post_attention_layernorm.weight")
    yield "transformer.ln_f.weight", weights.get("model.norm.weight")
    if not options["tie_weights"]:
        yield "lm_head.weight", weights.get("lm_head.weight")


def used_names(model_type: str, weights: WeightFiles, options: dict[str, Any]) -> set[str]:
    """The source tensors :func:`gpt2_tensors` / :func:`llama_tensors` read (to report any
    they would silently drop)."""
    names = weights.names()
    if model_type == "gpt2":
        return {n for n in names if not (n == "lm_head.weight" and options["tie_weights"])}
    used = {"model.embed_tokens.weight", "model.norm.weight"}
    if not options["tie_weights"]:
        used.add("lm_head.weight")
    parts = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"]
    parts += ["mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
    parts += ["input_layernorm", "post_attention_layernorm"]
    for i in range(options["n_layer"]):
        used.update(f"model.layers.{i}.{part}.weight" for part in parts)
        if options.get("attn_bias"):
            used.update(f"model.layers.{i}.self_attn.{p}_proj.bias" for p in "qkv")
    return used
