"""The model ladder: bigram, context-average, recurrent (RNN/GRU/LSTM) and Transformer, all
behind ``forward(idx, state=None) -> (logits, state)``."""

from lmforge.models.base import (
    LanguageModel,
    build_model,
    model_families,
    model_from_config,
    model_option_names,
)

__all__ = [
    "LanguageModel",
    "build_model",
    "model_families",
    "model_from_config",
    "model_option_names",
]
