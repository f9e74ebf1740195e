"""The one interface every model shares, and the registry of model families.

Every model maps token indices ``idx`` [B, T] and an optional carried ``state`` to logits
[B, T, I] over the next token at each position, and the state after the last position:

    logits, state = model(idx, state)

``state=None`` starts from an empty context. Feeding a sequence in one call, or in pieces while
carrying the state, gives the same logits; this is what lets one generation loop serve every
model (warm up on the prompt once, then feed one token at a time).

What the state is depends on the family: nothing for the bigram, the running sum and count for
the context model, the hidden (and cell) state for recurrent nets, the key/value cache for the
Transformer.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch
from torch import nn

from lmforge.errors import ConfigError


@dataclasses.dataclass
class ModelConfig:
    """Fields every model family has. Families subclass this with their own options."""

    vocab_size: int


class LanguageModel(nn.Module):
    """Base class: ``forward(idx, state=None) -> (logits, state)``."""

    family: ClassVar[str]
    config_class: ClassVar[type[ModelConfig]]

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config

    def forward(
        self, idx: torch.Tensor, state: Any = None, return_hidden: bool = False
    ) -> tuple[torch.Tensor, Any]:
        """(logits [B, T, I], state); with ``return_hidden`` the inputs of the output head
        [B, T, D] instead of the logits (models that have a head, see :meth:`output_head`)."""
        raise NotImplementedError

    def output_head(self) -> nn.Linear | None:
        """The final linear layer hidden → logits, if the model has one (lets the loss fuse
        it with the softmax for big vocabularies)."""
        return None

    @property
    def max_context(self) -> int | None:
        """The longest context the model attends to (None: unlimited, e.g. recurrent)."""
        return None

    def embedding_weight(self) -> torch.Tensor:
        """The token embedding matrix [I, D], one row per token (for pictures)."""
        raise NotImplementedError

    def num_parameters(self) -> int:
        """The number of distinct trainable parameters (tied weights counted once)."""
        seen: set[int] = set()
        total = 0
        for p in self.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                total += p.numel()
        return total

    def config_dict(self) -> dict[str, Any]:
        """The JSON-ready description that :func:`model_from_config` rebuilds."""
        return {"family": self.family, **dataclasses.asdict(self.config)}


MODEL_FAMILIES: dict[str, type[LanguageModel]] = {}


def register_model(*families: str):
    """Class decorator: make a model class buildable under the given family names."""

    def decorate(cls: type[LanguageModel]) -> type[LanguageModel]:
        for family in families:
            MODEL_FAMILIES[family] = cls
        return cls

    return decorate


def model_option_names(family: str) -> set[str]:
    """The config fields a family accepts, e.g. ``{'vocab_size', 'n_embd', ...}``."""
    return {f.name for f in dataclasses.fields(_family_class(family).config_class)}


def _family_class(family: str) -> type[LanguageModel]:
    _import_builtin_families()
    if family not in MODEL_FAMILIES:
        raise ConfigError(f"unknown model {family!r}; choose one of {', '.join(MODEL_FAMILIES)}")
    return MODEL_FAMILIES[family]


def build_model(family: str, **options: Any) -> LanguageModel:
    """Build a model of ``family`` from config options; unknown options are an error.

    >>> build_model("lstm", vocab_size=65, n_hidden=256).num_parameters()
    """
    cls = _family_class(family)
    allowed = model_option_names(family)
    extra = sorted(set(options) - allowed - {"family"})
    if extra:
        shown = ", ".join("--" + name.replace("_", "-") for name in extra)
        raise ConfigError(f"option(s) {shown} do not apply to model {family!r}; remove them")
    options.pop("family", None)
    config = cls.config_class(**options)
    if "cell" in allowed:
        config = dataclasses.replace(config, cell=family)  # type: ignore[call-arg]
    return cls(config)


def model_from_config(config: dict[str, Any]) -> LanguageModel:
    """Rebuild a model (untrained weights) from :meth:`LanguageModel.config_dict`."""
    options = dict(config)
    family = options.pop("family", None)
    if not isinstance(family, str):
        raise ConfigError(
            f"the model configuration names no family (got {family!r}); it needs one of "
            f"{', '.join(model_families())}"
        )
    return build_model(family, **options)


def model_families() -> list[str]:
    """The available family names."""
    _import_builtin_families()
    return list(MODEL_FAMILIES)


def _import_builtin_families() -> None:
    import importlib

    for module in ("bigram", "context", "recurrent", "transformer"):
        try:
            importlib.import_module(f"lmforge.models.{module}")
        except ModuleNotFoundError as exc:
            if exc.name != f"lmforge.models.{module}":
                raise
