"""Recurrent language models: embedding → stacked RNN / GRU / LSTM layers → linear head.

The state c_t (the hidden state, plus the cell state for the LSTM) is carried from one call to
the next, so generation warms up on the prompt once and then feeds one token at a time without
re-reading the prompt (the seed's ``lstmLM_Generation``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from lmforge.errors import ConfigError
from lmforge.models.base import LanguageModel, ModelConfig, register_model

_CELLS = {"rnn": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}


@dataclasses.dataclass
class RecurrentConfig(ModelConfig):
    """Options of the recurrent family; ``cell`` is set from the model name."""

    cell: str = "lstm"
    n_embd: int = 128
    n_hidden: int = 512
    n_layer: int = 2
    dropout: float = 0.0
    tie_weights: bool = False

    def __post_init__(self) -> None:
        if self.cell not in _CELLS:
            raise ConfigError(f"recurrent cell must be one of {', '.join(_CELLS)}")
        for name in ("n_embd", "n_hidden", "n_layer"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be positive")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"--dropout must be in [0, 1), got {self.dropout}")
        if self.tie_weights and self.n_embd != self.n_hidden:
            raise ConfigError(
                f"--tie-weights needs --n-embd equal to --n-hidden (got {self.n_embd} and "
                f"{self.n_hidden}); make them equal or drop --tie-weights"
            )


@register_model("rnn", "gru", "lstm")
class RecurrentLM(LanguageModel):
    """An Elman RNN, GRU or LSTM language model (as PyTorch's word-language-model example)."""

    config_class = RecurrentConfig

    def __init__(self, config: RecurrentConfig) -> None:
        super().__init__(config)
        self.embedding = nn.Embedding(config.vocab_size, config.n_embd)
        extra = {"nonlinearity": "tanh"} if config.cell == "rnn" else {}
        self.rnn = _CELLS[config.cell](
            config.n_embd,
            config.n_hidden,
            config.n_layer,
            dropout=config.dropout if config.n_layer > 1 else 0.0,
            batch_first=True,
            **extra,
        )
        self.drop = nn.Dropout(config.dropout)
        self.head = nn.Linear(config.n_hidden, config.vocab_size)
        nn.init.uniform_(self.embedding.weight, -0.1, 0.1)
        nn.init.uniform_(self.head.weight, -0.1, 0.1)
        nn.init.zeros_(self.head.bias)
        if config.tie_weights:
            self.head.weight = self.embedding.weight

    @property
    def family(self) -> str:  # type: ignore[override]
        return self.config.cell

    def forward(
        self, idx: torch.Tensor, state: Any = None, return_hidden: bool = False
    ) -> tuple[torch.Tensor, Any]:
        x = self.drop(self.embedding(idx))
        output, state = self.rnn(x, state)
        hidden = self.drop(output)
        return (hidden if return_hidden else self.head(hidden)), state

    def forward_packed(self, idx: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """For right-padded rows ``idx`` [B, T] of ``lengths`` [B], each read from an empty
        state to its own length: the logits after each row's last token [B, I] and the
        state there (what ``forward`` gives each row alone)."""
        x = self.drop(self.embedding(idx))
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        output, state = self.rnn(packed)
        hidden, _ = pad_packed_sequence(output, batch_first=True)
        rows = torch.arange(idx.shape[0], device=hidden.device)
        last = hidden[rows, lengths.to(hidden.device) - 1]
        return self.head(self.drop(last)), state

    def output_head(self) -> nn.Linear:
        return self.head

    def embedding_weight(self) -> torch.Tensor:
        return self.embedding.weight
