"""Typed configuration of a training run, per-model defaults, and TOML files.

A run's configuration is resolved in layers, each overriding the one before:
the dataclass defaults → the model family's defaults → a TOML file (``--config``) → flags.
The resolved configuration is written to ``RUN/config.json``.

A TOML file uses the same names as the flags, grouped in tables:

    out = "runs/shakespeare-lstm"
    [data]
    corpus = "tinyshakespeare"
    [tokenizer]
    kind = "char"
    [model]
    family = "lstm"
    n_hidden = 512
    [train]
    batch_size = 64
    time_budget = 600
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import tomllib
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lmforge.errors import ConfigError


@dataclasses.dataclass
class DataConfig:
    """Where the text comes from and how it is split."""

    corpus: str = "tinyshakespeare"
    data_dir: str | None = None
    val_fraction: float = 0.1

    def validate(self) -> None:
        """Raise a one-line error for an impossible setting."""
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(
                f"--val-fraction must be between 0 and 1 (exclusive), got {self.val_fraction}; "
                "for example 0.1 holds out the last tenth of the text"
            )


@dataclasses.dataclass
class TokenizerConfig:
    """How text becomes tokens: a tokenizer trained for the run, or one from ``file``."""

    kind: str = "char"
    file: str | None = None
    vocab_size: int | None = None
    pattern: str = "gpt4"
    special: list[str] = dataclasses.field(default_factory=list)
    lowercase: bool = False
    min_freq: int = 1
    max_vocab: int | None = None
    unk: bool = False
    word_split: str = "words"
    special_text: str = "plain"  # special-token text in the corpus: plain, allow or error

    def validate(self) -> None:
        """Raise a one-line error for an impossible setting."""
        if self.kind == "hf" and not self.file:
            raise ConfigError(
                "a tokenizer of kind hf is read from its file; give --tokenizer-file, or make a "
                "run from a Hugging Face model folder with `lmforge import DIR --out RUN`"
            )
        if self.kind not in ("char", "word", "bpe", "hf"):
            raise ConfigError(f"--tokenizer must be char, word or bpe, not {self.kind!r}")
        if self.word_split not in ("words", "whitespace"):
            raise ConfigError(f"--word-split must be words or whitespace, not {self.word_split!r}")
        if self.min_freq < 1:
            raise ConfigError(f"--min-freq must be at least 1, got {self.min_freq}")
        for name in ("vocab_size", "max_vocab"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"--{_flag(name)} must be at least 1, got {value}")


@dataclasses.dataclass
class TrainConfig:
    """The optimisation: batches, schedule, optimizer, evaluation cadence, device."""

    batch_size: int = 64
    block_size: int = 128
    max_steps: int | None = 5000
    time_budget: float | None = None
    learning_rate: float = 2e-3
    min_lr: float | None = None
    warmup_steps: int = 100
    lr_schedule: str = "cosine"
    optimizer: str = "adamw"
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    momentum: float = 0.9
    grad_clip: float = 1.0
    grad_accum: int = 1
    eval_interval: int = 250
    eval_iters: int = 20
    log_interval: int = 10
    seed: int = 1337
    device: str = "auto"
    dtype: str = "auto"
    compile: bool = False
    init_from: str | None = None  # a run or Hugging Face folder whose weights the run starts from
    strategy: str = "ddp"  # under torchrun: ddp (replicas) or fsdp (sharded)
    freeze: list[str] = dataclasses.field(default_factory=list)  # parts held fixed: embeddings

    def validate(self) -> None:
        """Raise a one-line error for an impossible setting."""
        positive = ("batch_size", "block_size", "grad_accum", "eval_interval", "eval_iters")
        for name in (*positive, "log_interval"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{_flag(name)} must be at least 1, got {getattr(self, name)}")
        if self.max_steps is not None and self.max_steps < 0:
            raise ConfigError(f"--max-steps must be 0 or more, got {self.max_steps}")
        if self.time_budget is not None and self.time_budget <= 0:
            raise ConfigError(f"--time-budget must be positive seconds, got {self.time_budget}")
        if self.max_steps is None and self.time_budget is None:
            raise ConfigError("give --max-steps or --time-budget (or both) so training can end")
        if self.learning_rate <= 0:
            raise ConfigError(f"--learning-rate must be positive, got {self.learning_rate}")
        if self.min_lr is not None and self.min_lr < 0:
            raise ConfigError(f"--min-lr must be 0 or more, got {self.min_lr}")
        for name in ("warmup_steps", "weight_decay", "grad_clip"):
            if getattr(self, name) < 0:
                raise ConfigError(f"--{_flag(name)} must be 0 or more, got {getattr(self, name)}")
        for name in ("beta1", "beta2", "momentum"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(
                    f"--{name} must be at least 0 and below 1, got {getattr(self, name)} "
                    "(the usual values are beta1 0.9, beta2 0.95 to 0.999, momentum 0.9)"
                )
        if not 0 <= self.seed < 2**63:
            raise ConfigError(f"--seed must be between 0 and 2**63 - 1, got {self.seed}")
        if self.optimizer not in ("adamw", "sgd"):
            raise ConfigError(f"--optimizer must be adamw or sgd, not {self.optimizer!r}")
        if self.lr_schedule not in ("cosine", "constant"):
            raise ConfigError(f"--lr-schedule must be cosine or constant, not {self.lr_schedule!r}")
        if self.strategy not in ("ddp", "fsdp"):
            raise ConfigError(f"--strategy must be ddp or fsdp, not {self.strategy!r}")
        for part in self.freeze:
            if part != "embeddings":
                raise ConfigError(f"--freeze {part}: only embeddings can be frozen")
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise ConfigError(
                f"--dtype must be auto, float32, bfloat16 or float16, not {self.dtype!r}"
            )

    @property
    def final_lr(self) -> float:
        """The learning rate the cosine schedule ends at (``min_lr``, default lr / 10)."""
        return self.min_lr if self.min_lr is not None else self.learning_rate / 10


@dataclasses.dataclass
class RunConfig:
    """Everything that defines a training run."""

    out: str
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = dataclasses.field(default_factory=TokenizerConfig)
    model: dict[str, Any] = dataclasses.field(default_factory=lambda: {"family": "lstm"})
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary (the ``config.json`` of a run, less its bookkeeping)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        """Rebuild from :meth:`to_dict`; unknown keys, values of the wrong type and impossible
        settings are a :class:`ConfigError`."""
        if not isinstance(data, dict):
            raise ConfigError(f"a run configuration is a table of settings, not {data!r}")
        out = data.get("out")
        if not isinstance(out, str) or not out:
            raise ConfigError(
                "give --out RUN_DIR (or `out` in the config file) for the run's files"
            )
        model = data.get("model", {"family": "lstm"})
        if not isinstance(model, dict):
            raise ConfigError(f"[model] must be a table of settings, not {model!r}")
        config = cls(
            out=out,
            data=_section(DataConfig, data.get("data", {}), "data"),
            tokenizer=_section(TokenizerConfig, data.get("tokenizer", {}), "tokenizer"),
            model=dict(model),
            train=_section(TrainConfig, data.get("train", {}), "train"),
        )
        config.data.validate()
        config.tokenizer.validate()
        config.train.validate()
        return config


# Per-family defaults: what `lmforge train --model X` uses when no flag says otherwise.
FAMILY_DEFAULTS: dict[str, dict[str, dict[str, Any]]] = {
    "bigram": {
        "model": {},
        "train": {
            "batch_size": 256,
            "block_size": 128,
            "max_steps": 500,
            "learning_rate": 0.1,
            "min_lr": 0.001,
            "warmup_steps": 0,
            "weight_decay": 0.0,
            "eval_interval": 100,
        },
    },
    # Short windows: an order-blind average of the last few characters still says a lot; over
    # long windows the sum grows and the mean blurs towards the unigram distribution.
    "context": {
        "model": {"mode": "mean"},
        "train": {
            "batch_size": 256,
            "block_size": 16,
            "max_steps": 1000,
            "learning_rate": 0.03,
            "min_lr": 0.001,
            "warmup_steps": 0,
            "weight_decay": 0.0,
            "eval_interval": 200,
        },
    },
    **{
        cell: {
            "model": {"n_embd": 128, "n_hidden": 512, "n_layer": 2, "dropout": 0.1},
            "train": {
                "batch_size": 64,
                "block_size": 128,
                "max_steps": 4000,
                "learning_rate": 3e-3,
                "warmup_steps": 100,
                "weight_decay": 0.1,
                "eval_interval": 250,
            },
        }
        for cell in ("rnn", "gru", "lstm")
    },
}

# The training settings of the presets sized for a laptop CPU (tiny, llama).
CPU_TRAINING: dict[str, Any] = {
    "batch_size": 32,
    "block_size": 128,
    "max_steps": 2000,
    "learning_rate": 2e-3,
    "min_lr": 2e-4,
    "warmup_steps": 100,
    "weight_decay": 0.1,
    "beta2": 0.99,
    "eval_interval": 250,
    "eval_iters": 20,
}

# Transformer presets (`--preset NAME`): a shape and the training settings that suit it.
TRANSFORMER_PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    # trains well in minutes on a laptop CPU (the default there)
    "tiny": {
        "model": {
            "n_layer": 4,
            "n_head": 4,
            "n_embd": 192,
            "dropout": 0.0,
            "bias": False,
            "position": "rotary",
        },
        "train": dict(CPU_TRAINING),
    },
    # nanoGPT's shakespeare-char model: minutes on one GPU (the default there)
    "small": {
        "model": {
            "n_layer": 6,
            "n_head": 6,
            "n_embd": 384,
            "dropout": 0.2,
            "bias": False,
            "position": "learned",
        },
        "train": {
            "batch_size": 64,
            "block_size": 256,
            "max_steps": 5000,
            "learning_rate": 1e-3,
            "min_lr": 1e-4,
            "warmup_steps": 100,
            "weight_decay": 0.1,
            "beta2": 0.99,
            "eval_interval": 250,
            "eval_iters": 200,
        },
    },
    # the GPT-2 124M shape, with nanoGPT's train_gpt2 settings (for a large corpus and a GPU)
    "gpt2": {
        "model": {
            "n_layer": 12,
            "n_head": 12,
            "n_embd": 768,
            "dropout": 0.0,
            "bias": True,
            "position": "learned",
        },
        "train": {
            "batch_size": 12,
            "block_size": 1024,
            "grad_accum": 40,
            "max_steps": 600000,
            "learning_rate": 6e-4,
            "min_lr": 6e-5,
            "warmup_steps": 2000,
            "weight_decay": 0.1,
            "beta2": 0.95,
            "eval_interval": 1000,
            "eval_iters": 200,
        },
    },
    # Llama's architecture at tiny's compute (≈ 97 % of its multiply-adds per token): RMSNorm,
    # SwiGLU, rotary, grouped-query attention (6 query heads of 32 share 2 key/value heads)
    "llama": {
        "model": {
            "n_layer": 4,
            "n_head": 6,
            "n_kv_head": 2,
            "n_embd": 192,
            "mlp": "swiglu",
            "mlp_hidden": 576,
            "norm": "rmsnorm",
            "dropout": 0.0,
            "bias": False,
            "position": "rotary",
        },
        "train": dict(CPU_TRAINING),
    },
}
FAMILY_DEFAULTS["transformer"] = TRANSFORMER_PRESETS["tiny"]

# LSTM presets (`--model lstm --preset NAME`).
LSTM_PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    # WikiText-2 at word level (`--corpus wikitext-2 --tokenizer word --word-split whitespace`)
    # for ~10 CPU minutes. The 33,278-way softmax costs ~8× the two LSTM layers per token, so
    # the output width sets the speed: tied weights (embedding = hidden = 256) keep one big
    # matrix, and bfloat16 with the fused loss (both automatic) keep it cheap: 1.07× the
    # training tokens/s of the PyTorch example's untied 2×200 float32 model with 69 % of its
    # parameters, where a tied 2×400 runs at 0.67× (BENCHMARKS.md, "The ladder on three
    # corpora"). The optimizer is the example's, plain SGD at lr 20 with clip 0.25, but the
    # rate decays on a cosine over the budget (to lr / 10) where the example divides it by 4
    # at each plateau: held constant it stalls after ~40 min. Test perplexity (state carried)
    # on the quiet CPU: 234.2 at 600 s and 145.2 at 3600 s, against 275–283 and 211.2 at a
    # constant lr, 321.1 with AdamW 3e-3 at 600 s, and 293.7 and 160.0 for the example.
    "wt2": {
        "model": {
            "n_embd": 256,
            "n_hidden": 256,
            "n_layer": 2,
            "dropout": 0.1,
            "tie_weights": True,
        },
        "train": {
            "batch_size": 32,
            "block_size": 35,
            "max_steps": 20000,
            "optimizer": "sgd",
            "learning_rate": 20.0,
            "lr_schedule": "cosine",
            "warmup_steps": 0,
            "weight_decay": 0.0,
            "grad_clip": 0.25,
            "eval_interval": 500,
            "eval_iters": 20,
        },
    },
}

# Every family's presets: `--preset NAME` looks the name up in its model's table.
PRESETS: dict[str, dict[str, dict[str, dict[str, Any]]]] = {
    "transformer": TRANSFORMER_PRESETS,
    "lstm": LSTM_PRESETS,
}

# On a GPU, a corpus of this many bytes or more gets the GPT-2 124M preset instead of `small`.
GPT2_PRESET_MIN_BYTES = 100_000_000


def resolve_config(overrides: dict[str, Any], config_file: str | Path | None = None) -> RunConfig:
    """Layer family defaults, the TOML file and ``overrides`` (same nesting as the TOML file,
    ``None`` values ignored) into a :class:`RunConfig`.

    >>> resolve_config({"out": "runs/x", "model": {"family": "bigram"}}).train.learning_rate
    0.1
    """
    from_file = load_config_file(config_file) if config_file else {}
    layered = _merge(from_file, _drop_none(overrides))
    train_given = layered.get("train", {})
    if "time_budget" in train_given and "max_steps" not in train_given:
        layered = _merge(layered, {"train": {"max_steps": None}})  # the budget alone ends it
    if train_given.get("init_from") is not None:
        from lmforge.training.init_from import init_from_settings

        layered = init_from_settings(layered)  # the source's model and tokenizer
    family = layered.get("model", {}).get("family", "lstm")
    preset = layered.get("model", {}).get("preset")
    for name, value in (("family", family), ("preset", preset)):
        if value is not None and not isinstance(value, str):
            raise ConfigError(f"[model] {name} must be a string, not {value!r}")
    defaults = FAMILY_DEFAULTS.get(family, {"model": {}, "train": {}})
    base = {"model": {"family": family, **defaults["model"]}, "train": defaults["train"]}
    if family == "transformer":
        base = _merge(base, transformer_preset(preset, layered))
    elif preset is not None:
        base = _merge(base, family_preset(family, preset))
    merged = _merge(base, layered)
    merged["model"].pop("preset", None)
    model_block = merged["model"].get("block_size")
    if "init_from" in train_given and "block_size" not in train_given and model_block:
        # a fine-tune's default window fits its source's context
        window = merged["train"].get("block_size", TrainConfig.block_size)
        merged["train"]["block_size"] = min(window, model_block)
    if family in ("transformer", "context"):
        _fit_block_size(merged)
    config = RunConfig.from_dict(merged)
    check_model_options(config.model)
    return config


def transformer_preset(name: str | None, given: dict[str, Any]) -> dict[str, Any]:
    """The settings of Transformer preset ``name`` (``{"model": ..., "train": ...}``).
    ``name=None`` picks the preset for the device and corpus of ``given`` (the options set so
    far): ``tiny`` on a CPU, ``small`` on a GPU, ``gpt2`` on a GPU for a corpus of 100 MB or
    more.

    >>> transformer_preset("small", {})["model"]["n_embd"]
    384
    """
    if name is None:
        from lmforge.device import pick_device

        device = pick_device(given.get("train", {}).get("device"))
        name = auto_transformer_preset(device.type, lambda: _corpus_bytes(given))
    return family_preset("transformer", name)


def family_preset(family: str, name: str) -> dict[str, Any]:
    """The settings of preset ``name`` of model ``family`` (``{"model": ..., "train": ...}``),
    or a one-line error naming the presets there are.

    >>> family_preset("lstm", "wt2")["model"]["n_hidden"]
    256
    """
    presets = PRESETS.get(family, {})
    if name in presets:
        return copy.deepcopy(presets[name])
    owners = [other for other, table in PRESETS.items() if name in table]
    if owners:
        hint = f", or choose {family}'s preset {', '.join(presets)}" if presets else ""
        raise ConfigError(
            f"--preset applies to --model {owners[0]} only; drop it for {family}{hint}"
        )
    if presets:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(presets)}")
    raise ConfigError(
        f"--preset applies to --model {' or '.join(PRESETS)} only; drop it for {family}"
    )


def preset_names() -> list[str]:
    """Every family's preset names, for the ``--preset`` flag."""
    return [name for table in PRESETS.values() for name in table]


def auto_transformer_preset(device_type: str, corpus_bytes: Callable[[], int]) -> str:
    """The preset `lmforge train --model transformer` uses when none is named: ``tiny`` on a
    CPU; on an accelerator ``small``, or ``gpt2`` when ``corpus_bytes()`` (called only then)
    is at least 100 MB.

    >>> auto_transformer_preset("cpu", lambda: 10**9), auto_transformer_preset("cuda", lambda: 1)
    ('tiny', 'small')
    """
    if device_type == "cpu":
        return "tiny"
    return "gpt2" if corpus_bytes() >= GPT2_PRESET_MIN_BYTES else "small"


def _corpus_bytes(given: dict[str, Any]) -> int:
    from lmforge.data.corpora import resolve_corpus

    data = given.get("data", {})
    corpus = resolve_corpus(data.get("corpus", DataConfig.corpus), data.get("data_dir"))
    return sum(path.stat().st_size for paths in corpus.splits.values() for path in paths)


def _fit_block_size(merged: dict[str, Any]) -> None:
    """A Transformer's (or context model's) context is the training window (``--block-size``)
    unless set apart."""
    block = merged["train"].get("block_size", TrainConfig.block_size)
    model_block = merged["model"].setdefault("block_size", block)
    if model_block < block:
        raise ConfigError(
            f"the training window --block-size {block} is longer than the model's context "
            f"block_size {model_block}; shorten the window or lengthen [model] block_size"
        )


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a TOML configuration file, or a run's ``config.json`` (its resolved settings, so
    ``--config runs/a/config.json --out runs/b`` repeats run a), with one-line errors."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}; check the path") from None
    except (UnicodeDecodeError, IsADirectoryError):
        raise ConfigError(f"{path} is not a TOML or JSON text file; check the path") from None
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path} is not valid JSON ({exc}); fix the file") from None
        data = dict(data.get("run", data)) if isinstance(data, dict) else data
        if isinstance(data, dict):
            data.pop("out", None)  # a repeated run goes to its own --out
    else:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path} is not valid TOML ({exc}); fix the file") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} does not hold a table of settings; see lmforge train --help")
    known = {"out", "data", "tokenizer", "model", "train"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(
            f"{path}: unknown key(s) {', '.join(unknown)}; use out and the tables "
            "[data], [tokenizer], [model], [train]"
        )
    for table in sorted(known - {"out"}):
        if not isinstance(data.get(table, {}), dict):
            raise ConfigError(f"{path}: {table} must be a table [{table}], not {data[table]!r}")
    if not isinstance(data.get("out", ""), str):
        raise ConfigError(f'{path}: out must be a string (out = "runs/name"), not {data["out"]!r}')
    return data


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _drop_none(tree: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            value = _drop_none(value)
            if value:
                out[key] = value
        elif value is not None:
            out[key] = value
    return out


def _section(cls: type, values: Any, name: str) -> Any:
    if not isinstance(values, dict):
        raise ConfigError(f"[{name}] must be a table of settings, not {values!r}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(
            f"unknown {name} option(s): {', '.join(unknown)}; known: {', '.join(sorted(names))}"
        )
    check_types(cls, values, name)
    return cls(**values)


def check_types(cls: type, values: dict[str, Any], section: str) -> None:
    """Raise a :class:`ConfigError` unless each of ``values`` has the type its field in the
    dataclass ``cls`` declares (an integer serves for a float; floats must be finite).

    >>> check_types(TrainConfig, {"batch_size": "64"}, "train")
    Traceback (most recent call last):
    lmforge.errors.ConfigError: [train] batch_size must be an integer, not '64'; ...
    """
    hints = typing.get_type_hints(cls)
    for name, value in values.items():
        if name in hints and not _has_type(value, hints[name]):
            raise ConfigError(
                f"[{section}] {name} must be {_describe(hints[name])}, not {value!r}; "
                f"write it as such (for example {name} = {_example(hints[name])})"
            )


def check_model_options(model: dict[str, Any]) -> None:
    """Check the option types of a ``[model]`` table against its family's configuration
    (unknown families and options are reported when the model is built)."""
    from lmforge.models.base import MODEL_FAMILIES, model_families

    family = model.get("family", "lstm")
    if not isinstance(family, str) or family not in model_families():
        raise ConfigError(f"unknown model {family!r}; choose one of {', '.join(model_families())}")
    config_class = MODEL_FAMILIES[family].config_class
    known = {k: v for k, v in model.items() if k != "family"}
    check_types(config_class, known, "model")
    for name, value in known.items():
        if isinstance(value, int) and not isinstance(value, bool) and value < 1:
            raise ConfigError(f"--{_flag(name)} must be at least 1, got {value}")
    dropout = known.get("dropout", 0.0)
    if isinstance(dropout, int | float) and not 0.0 <= dropout < 1.0:
        raise ConfigError(f"--dropout must be at least 0 and below 1, got {dropout}")
    names = {f.name for f in dataclasses.fields(config_class)}
    if set(known) <= names:  # the shape's own checks, before any text is tokenized
        config_class(**{"vocab_size": 1, **known})


def _has_type(value: Any, hint: Any) -> bool:
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return any(_has_type(value, option) for option in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        if isinstance(value, float):
            return math.isfinite(value)
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if typing.get_origin(hint) is list:
        (item,) = typing.get_args(hint)
        return isinstance(value, list) and all(_has_type(v, item) for v in value)
    return True


_TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a finite number", str: "a string"}
_EXAMPLES = {bool: "true", int: "64", float: "0.1", str: '"text"'}


def _describe(hint: Any) -> str:
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        names = [_describe(h) for h in typing.get_args(hint) if h is not type(None)]
        return " or ".join(names)
    if typing.get_origin(hint) is list:
        return "a list of strings"
    return _TYPE_NAMES.get(hint, str(hint))


def _example(hint: Any) -> str:
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        hint = next(h for h in typing.get_args(hint) if h is not type(None))
    if typing.get_origin(hint) is list:
        return '["<|endoftext|>"]'
    return _EXAMPLES.get(hint, "...")


def _flag(name: str) -> str:
    return name.replace("_", "-")
