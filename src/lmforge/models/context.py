"""The context-average model: the next token from the sum or mean of all previous embeddings.

c_t = Σ_{s≤t} e(x_s)  (``mode="sum"``)   or   c_t = (1/t) Σ_{s≤t} e(x_s)  (``mode="mean"``)
p(x_{t+1} | x_1..x_t) = softmax(c_t)            (``n_embd=None``: embeddings of size I, no head,
                                                 as in the seed)
p(x_{t+1} | x_1..x_t) = softmax(W c_t + b)      (``n_embd=E``: a linear head)

The running sum is a cumulative sum, O(T). The model is order-blind by design: any reordering of
the context gives the same prediction. The carried state is the running sum and the count.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from lmforge.errors import ConfigError
from lmforge.models.base import LanguageModel, ModelConfig, register_model


@dataclasses.dataclass
class ContextConfig(ModelConfig):
    """``mode``: ``sum`` or ``mean``; ``n_embd``: None for size-I embeddings with no head."""

    mode: str = "mean"
    n_embd: int | None = None

    def __post_init__(self) -> None:
        if self.mode not in ("sum", "mean"):
            raise ConfigError(f"context mode must be 'sum' or 'mean', not {self.mode!r}")
        if self.n_embd is not None and self.n_embd < 1:
            raise ConfigError(f"--n-embd must be positive, got {self.n_embd}")


@register_model("context")
class ContextLM(LanguageModel):
    """Order-blind bag-of-context model."""

    family = "context"
    config_class = ContextConfig

    def __init__(self, config: ContextConfig) -> None:
        super().__init__(config)
        width = config.n_embd or config.vocab_size
        self.embedding = nn.Embedding(config.vocab_size, width)
        self.head = nn.Linear(width, config.vocab_size) if config.n_embd else None
        if self.head is None:
            nn.init.zeros_(self.embedding.weight)  # logits = c_t = 0: loss ln I at step 0
        else:
            nn.init.normal_(self.embedding.weight, std=0.02)
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    def forward(
        self,
        idx: torch.Tensor,
        state: tuple[torch.Tensor, int] | None = None,
        return_hidden: bool = False,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, int]]:
        running = self.embedding(idx).cumsum(dim=1)
        seen = 0
        if state is not None:
            previous_sum, seen = state
            running = running + previous_sum[:, None, :]
        if self.config.mode == "mean":
            counts = torch.arange(seen + 1, seen + idx.shape[1] + 1, device=idx.device)
            context = running / counts.to(running.dtype)[None, :, None]
        else:
            context = running
        logits = context if self.head is None or return_hidden else self.head(context)
        return logits, (running[:, -1, :], seen + idx.shape[1])

    def output_head(self) -> nn.Linear | None:
        return self.head

    def embedding_weight(self) -> torch.Tensor:
        return self.embedding.weight
