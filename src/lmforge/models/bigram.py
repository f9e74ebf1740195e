"""The bigram model: p(x_{t+1} | x_t) = softmax(E[x_t]), with E ∈ R^{I×I}.

Row x_t of E is the vector of next-token logits (the seed writes it as column x_t of E). Trained
by maximum likelihood it converges to the count model p(b | a) = count(a, b) / count(a).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from lmforge.models.base import LanguageModel, ModelConfig, register_model


@dataclasses.dataclass
class BigramConfig(ModelConfig):
    """The bigram has no options beyond the vocabulary size."""


@register_model("bigram")
class BigramLM(LanguageModel):
    """logits[b, t] = E[idx[b, t]]. Stateless: the next token depends on the current one only."""

    family = "bigram"
    config_class = BigramConfig

    def __init__(self, config: BigramConfig) -> None:
        super().__init__(config)
        self.logits_table = nn.Embedding(config.vocab_size, config.vocab_size)
        nn.init.zeros_(self.logits_table.weight)  # uniform prediction: loss ln I at step 0

    def forward(
        self, idx: torch.Tensor, state: Any = None, return_hidden: bool = False
    ) -> tuple[torch.Tensor, None]:
        return self.logits_table(idx), None

    def embedding_weight(self) -> torch.Tensor:
        return self.logits_table.weight
