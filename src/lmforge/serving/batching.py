"""The batched state of one model's active sequences: join, keep, step.

Every sequence first reads its prompt (the model's ordinary forward from an empty state, as
:func:`lmforge.generation.generate_ids` does); its state then *joins* a batch as a new row.
*read* does both for several windows at once: the Transformer and the recurrent models read
them in one padded model call (a window's result does not depend on the others'), the other
families one by one. One *step* feeds every row its next token in one model call and gives the
next-token logits of each row; *keep* drops the rows that left. Rows are independent: a row's
logits are what the sequence would get alone (up to float rounding).

>>> batch = batch_for(model)
>>> logits, state = model(prompt_ids[None]); batch.join(state)      # row 0
>>> batch.read([other_ids, third_ids])                              # rows 1, 2: logits [2, I]
>>> batch.step(torch.tensor([next_0, next_1, next_2]))              # logits [3, I]
>>> batch.keep([1, 2])                                              # row 0 left

Each family batches its own state: the Transformer's key/value caches go into a
:class:`~lmforge.models.ragged.RaggedKVCache` (every row at its own position); recurrent hidden
(and cell) states are stacked along the batch dimension; the bigram has no state; the
context model's rows are grouped by the length of their window tail (rows agree once their
window is full) with one token count per row.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch

from lmforge.device import model_device
from lmforge.models.base import LanguageModel


class Batch:
    """Rows of carried model states, stepped together (see the module docstring). This base
    class steps each row alone: it serves any model, however its state looks."""

    def __init__(self, model: LanguageModel) -> None:
        self.model = model
        self.states: list[Any] = []

    @property
    def size(self) -> int:
        """The number of rows."""
        return len(self.states)

    def join(self, state: Any) -> None:
        """Append a row: the state a B=1 model call left."""
        self.states.append(state)

    def keep(self, rows: list[int]) -> None:
        """Keep only ``rows``, in that order."""
        self.states = [self.states[i] for i in rows]

    def read(self, windows: list[list[int]]) -> torch.Tensor:
        """Read each window of token ids from an empty state and join its state as a new row;
        return the next-token logits after each window [k, I] (float32). Nothing joins when
        the model call fails."""
        results = [
            self.model(torch.tensor(w, device=model_device(self.model))[None]) for w in windows
        ]
        for _, state in results:
            self.join(state)
        return torch.stack([logits[0, -1] for logits, _ in results]).float()

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed row i its next token ``tokens[i]``; return the raw next-token logits [B, I]."""
        out = []
        for i, state in enumerate(self.states):
            logits, self.states[i] = self.model(tokens[i].view(1, 1), state)
            out.append(logits[0, -1])
        return torch.stack(out)


class StatelessBatch(Batch):
    """The bigram: nothing is carried, the batch is just the last tokens."""

    def __init__(self, model: LanguageModel) -> None:
        super().__init__(model)
        self.rows = 0

    @property
    def size(self) -> int:
        return self.rows

    def join(self, state: Any) -> None:
        self.rows += 1

    def keep(self, rows: list[int]) -> None:
        self.rows = len(rows)

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        logits, _ = self.model(tokens[:, None])
        return logits[:, -1]


class RecurrentBatch(Batch):
    """RNN / GRU / LSTM: the hidden (and cell) states [layers, B, H], stacked along B."""

    def __init__(self, model: LanguageModel) -> None:
        super().__init__(model)
        self.state: tuple[torch.Tensor, ...] | None = None
        self.rows = 0

    @property
    def size(self) -> int:
        return self.rows

    def join(self, state: torch.Tensor | tuple[torch.Tensor, ...]) -> None:
        parts = state if isinstance(state, tuple) else (state,)
        if self.state is None or self.rows == 0:
            self.state = tuple(parts)
        else:
            pairs = zip(self.state, parts, strict=True)
            self.state = tuple(torch.cat([a, b], dim=1) for a, b in pairs)
        self.rows += parts[0].shape[1]

    def read(self, windows: list[list[int]]) -> torch.Tensor:
        """Several windows in one packed call (each runs to its own length)."""
        if len(windows) == 1:
            return super().read(windows)
        idx, lengths = padded(windows, model_device(self.model))
        logits, state = self.model.forward_packed(idx, lengths)
        self.join(state)
        return logits.float()

    def keep(self, rows: list[int]) -> None:
        self.rows = len(rows)
        if self.state is None:
            return
        if not rows:
            self.state = None
            return
        index = torch.tensor(rows, device=self.state[0].device)
        self.state = tuple(part.index_select(1, index) for part in self.state)

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        assert self.state is not None
        carried = self.state if len(self.state) > 1 else self.state[0]
        logits, state = self.model(tokens[:, None], carried)
        self.state = tuple(state) if isinstance(state, tuple) else (state,)
        return logits[:, -1]


class TransformerBatch(Batch):
    """The Transformer: one row alone keeps the plain
    :class:`~lmforge.models.transformer.KVCache` its prompt read left, and decodes exactly as
    :func:`lmforge.generation.generate_ids` does (the lean path); two rows or more share one
    :class:`~lmforge.models.ragged.RaggedKVCache`. The batch switches between the two as rows
    join and leave.

    >>> batch.join(state_a); type(batch.cache).__name__      # one row
    'KVCache'
    >>> batch.join(state_b); type(batch.cache).__name__      # two rows
    'RaggedKVCache'
    >>> batch.keep([1]); type(batch.cache).__name__          # one again: row 1's own keys
    'KVCache'
    """

    def __init__(self, model: LanguageModel) -> None:
        super().__init__(model)
        self.cache: Any = None  # None (no rows), a KVCache (one row) or a RaggedKVCache
        self.rows = 0

    @property
    def size(self) -> int:
        return self.rows

    def join(self, state: Any) -> None:
        if self.rows == 0:
            self.cache = state
        else:
            self._ragged().insert(state)
        self.rows += state.batch_size

    def read(self, windows: list[list[int]]) -> torch.Tensor:
        """Several windows in one call, right-padded to the longest: causal attention keeps
        the padding out of each window's own positions, and each row's cache length is its
        window's (the padding's keys are never attended to, and are overwritten)."""
        if len(windows) == 1:
            return super().read(windows)
        idx, lengths = padded(windows, model_device(self.model))
        hidden, cache = self.model(idx, return_hidden=True)
        last = hidden[torch.arange(len(windows), device=idx.device), lengths - 1]
        head = self.model.output_head()
        assert head is not None
        logits = head(last)
        self._ragged().insert(cache, lengths)
        self.rows += len(windows)
        return logits.float()

    def _ragged(self) -> Any:
        """The batch's RaggedKVCache, made (and the lone row's plain cache moved in) if the
        batch has fewer than two rows."""
        from lmforge.models.ragged import RaggedKVCache

        if self.rows <= 1:
            config = self.model.config
            alone, self.cache = self.cache, RaggedKVCache(config.n_layer, config.block_size)
            if self.rows == 1:
                self.cache.insert(alone)
        return self.cache

    def keep(self, rows: list[int]) -> None:
        if self.rows > 1 and len(rows) == 1:
            self.cache = self.cache.row(rows[0])
        elif not rows:
            self.cache = None
        elif self.rows > 1:
            self.cache.keep(rows)
        self.rows = len(rows)

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        logits, self.cache = self.model(tokens[:, None], self.cache)
        return logits[:, -1]


class ContextBatch(Batch):
    """The context model: rows whose window tails have the same length step together, with
    one token count per row (after ``block_size - 1`` tokens every row's tail is full, so
    long-running rows form one group)."""

    def join(self, state: Any) -> None:
        tail_sum, tail, seen = state
        seen = torch.as_tensor(seen, device=tail_sum.device).reshape(1)
        self.states.append((tail_sum, tail, seen))

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        groups: dict[int, list[int]] = defaultdict(list)
        for i, (_, tail, _) in enumerate(self.states):
            groups[tail.shape[1]].append(i)
        out: torch.Tensor | None = None
        for rows in groups.values():
            state = tuple(torch.cat([self.states[i][part] for i in rows]) for part in range(3))
            index = torch.tensor(rows, device=tokens.device)
            logits, (tail_sum, tail, seen) = self.model(tokens[index][:, None], state)
            if out is None:
                out = logits.new_empty(len(self.states), logits.shape[-1])
            out[index] = logits[:, -1]
            for j, i in enumerate(rows):
                self.states[i] = (tail_sum[j : j + 1], tail[j : j + 1], seen[j : j + 1])
        assert out is not None
        return out


def padded(windows: list[list[int]], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Windows of token ids as one right-padded (with token 0) batch [k, longest], and their
    lengths [k].

    >>> padded([[5, 6, 7], [8]], torch.device("cpu"))
    (tensor([[5, 6, 7],
            [8, 0, 0]]), tensor([3, 1]))
    """
    longest = max(len(w) for w in windows)
    rows = [w + [0] * (longest - len(w)) for w in windows]
    lengths = [len(w) for w in windows]
    return torch.tensor(rows, device=device), torch.tensor(lengths, device=device)


def batch_for(model: LanguageModel) -> Batch:
    """An empty batch of the right kind for ``model`` (any other model: rows stepped one by
    one)."""
    from lmforge.models.bigram import BigramLM
    from lmforge.models.context import ContextLM
    from lmforge.models.recurrent import RecurrentLM
    from lmforge.models.transformer import TransformerLM

    if isinstance(model, TransformerLM):
        return TransformerBatch(model)
    if isinstance(model, RecurrentLM):
        return RecurrentBatch(model)
    if isinstance(model, BigramLM):
        return StatelessBatch(model)
    if isinstance(model, ContextLM):
        return ContextBatch(model)
    return Batch(model)
