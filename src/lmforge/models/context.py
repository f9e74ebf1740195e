"""The context-average model: the next token from the sum or mean of the previous embeddings.

c_t = Σ_{s∈W_t} e(x_s)  (``mode="sum"``)   or   c_t = (1/|W_t|) Σ_{s∈W_t} e(x_s)  (``mode="mean"``)
p(x_{t+1} | x_1..x_t) = softmax(c_t)            (``n_embd=None``: embeddings of size I, no head,
                                                 as in the seed)
p(x_{t+1} | x_1..x_t) = softmax(W c_t + b)      (``n_embd=E``: a linear head)

W_t is the window of the last ``block_size`` tokens x_{t-block_size+1}..x_t: the longest
context the model saw in training (``lmforge train`` sets it to the training ``--block-size``),
so generation and scoring of a long text see what training saw; a sum does not keep growing
with the text's length. ``block_size=None`` (runs made before it existed) sums everything.

The window sums are cumulative sums minus the cumulative sums of the tokens that left the
window, O(T). The model is order-blind by design: any reordering of the window gives the same
prediction. The carried state is the sum of the last ``block_size - 1`` embeddings, those
tokens, and the number of tokens seen (an int, or a tensor [B] of one count per row, so that
rows of different lengths can be decoded together).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.errors import ConfigError
from lmforge.models.base import LanguageModel, ModelConfig, register_model

ContextState = tuple[torch.Tensor, torch.Tensor, int | torch.Tensor]


@dataclasses.dataclass
class ContextConfig(ModelConfig):
    """``mode``: ``sum`` or ``mean``; ``n_embd``: None for size-I embeddings with no head;
    ``block_size``: how many of the last tokens are summed (None: all of them)."""

    mode: str = "mean"
    n_embd: int | None = None
    block_size: int | None = None

    def __post_init__(self) -> None:
        if self.mode not in ("sum", "mean"):
            raise ConfigError(f"context mode must be 'sum' or 'mean', not {self.mode!r}")
        if self.n_embd is not None and self.n_embd < 1:
            raise ConfigError(f"--n-embd must be positive, got {self.n_embd}")
        if self.block_size is not None and self.block_size < 1:
            raise ConfigError(f"the context block_size must be positive, got {self.block_size}")


@register_model("context")
class ContextLM(LanguageModel):
    """Order-blind bag-of-context model over a sliding window of ``block_size`` tokens."""

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
        state: ContextState | None = None,
        return_hidden: bool = False,
    ) -> tuple[torch.Tensor, ContextState]:
        window = self.config.block_size
        if state is None:
            tail, seen = idx[:, :0], 0
            running = self.embedding(idx).cumsum(dim=1)
        else:
            tail_sum, tail, seen = state
            running = self.embedding(idx).cumsum(dim=1) + tail_sum[:, None, :]
        history = torch.cat([tail, idx], dim=1)  # the window's earlier tokens, then idx
        steps, length = idx.shape[1], history.shape[1]
        if window is not None and length > window:
            # position j of idx (history position len(tail) + j) loses history[len(tail) + j -
            # window] from its window: subtract the running sum of those departures
            first = window - tail.shape[1]
            left = self.embedding(history[:, : length - window]).cumsum(dim=1)
            running = running - F.pad(left, (0, 0, first, 0))
        if self.config.mode == "mean":
            # seen: an int, or one count per row [B] (batched decoding of unequal lengths)
            offsets = torch.as_tensor(seen, device=idx.device).reshape(-1, 1)
            counts = torch.arange(1, steps + 1, device=idx.device) + offsets  # [1 or B, T]
            if window is not None:
                counts = counts.clamp(max=window)
            context = running / counts.to(running.dtype)[:, :, None]
        else:
            context = running
        logits = context if self.head is None or return_hidden else self.head(context)
        return logits, self._next_state(running[:, -1, :], history, seen + steps)

    def _next_state(
        self, last: torch.Tensor, history: torch.Tensor, seen: int | torch.Tensor
    ) -> ContextState:
        """The state after the last position: the window less its oldest token when full."""
        window = self.config.block_size
        if window is None:
            return last, history[:, :0], seen
        keep = min(window - 1, history.shape[1])
        if history.shape[1] >= window:
            last = last - self.embedding(history[:, -window])
        return last, history[:, history.shape[1] - keep :], seen

    def output_head(self) -> nn.Linear | None:
        return self.head

    def embedding_weight(self) -> torch.Tensor:
        return self.embedding.weight
