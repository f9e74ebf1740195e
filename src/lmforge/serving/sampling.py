"""Drawing the next token of many rows at once, each with its own settings and generator, and
the :class:`TokenInfo` a sequence's reader gets for each token (the serving engine's sampling;
:mod:`lmforge.serving.engine` runs it once per step).

Rows that filter alike (temperature, top-k, top-p) are processed together and drawn in one go
(:func:`draw_rows`), each row with its own ``torch.Generator``: the tokens and the generators'
states are exactly those of ``torch.multinomial`` row by row, as ``lmforge sample`` draws.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Sequence
from typing import Any

import torch

from lmforge.generation import process_logits


@dataclasses.dataclass(frozen=True)
class TokenInfo:
    """A token, log p(token | context) from the model's raw logits (float32, before
    temperature / top-k / top-p / penalty: what ``lmforge score`` gives), and the ``top``
    most likely tokens with their logprobs, most likely first."""

    token: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


def sampling_groups(rows: Sequence[Any]) -> list[list[int]]:
    """The sampled (not greedy) rows, grouped by the filters they apply; a row with a
    repetition penalty (its own ``seen`` tokens) is a group of its own, so the rows of a
    larger group sample at a temperature above 0. ``rows``: the engine's rows, each with
    ``greedy``, ``config`` (a SampleConfig) and ``seen`` (None, or its seen tokens)."""
    groups: dict[object, list[int]] = {}
    for i, slot in enumerate(rows):
        if slot.greedy:
            continue
        config = slot.config
        key = (config.temperature, config.top_k, config.top_p) if slot.seen is None else i
        groups.setdefault(key, []).append(i)
    return list(groups.values())


def grouped_process_logits(
    logits: torch.Tensor, group: list[int], rows: Sequence[Any]
) -> torch.Tensor | None:
    """process_logits over the group's rows at once (None: a single row, done alone)."""
    if len(group) == 1:
        return None
    index = torch.tensor(group, device=logits.device)
    with contextlib.suppress(RuntimeError):
        return process_logits(logits.index_select(0, index), rows[group[0]].config)
    return None


INVALID_DRAW = "model step failed: the next-token probabilities are not finite (NaN or inf)"


def draw_rows(
    probs: torch.Tensor, generators: list[torch.Generator]
) -> tuple[torch.Tensor, list[bool]]:
    """One token per row of ``probs`` [N, I], row i drawn with ``generators[i]``: exactly the
    token, and the generator state after, of ``torch.multinomial(probs[i:i+1], 1,
    generator=generators[i])``, which for one sample takes argmax(p / q), q ~ Exp(1) drawn
    from the generator. Here the division and the argmax run once for all rows, and the rows'
    validity is read back once rather than once per row (on a GPU, one synchronisation per
    step instead of one per row). A row multinomial would refuse (not finite, negative, or
    summing to 0) draws nothing and is False in the returned list.

    >>> probs = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    >>> draw_rows(probs, [torch.Generator(), torch.Generator()])
    (tensor([1, 0]), [True, True])
    """
    usable = torch.isfinite(probs).all(dim=-1) & (probs >= 0).all(dim=-1) & (probs.sum(-1) > 0)
    valid = usable.tolist()
    q = torch.ones_like(probs)
    for row, ok, generator in zip(q, valid, generators, strict=True):
        if ok:
            row.exponential_(generator=generator)
    return (probs / q).argmax(dim=-1), valid


def token_infos(logprobs: torch.Tensor, tokens: torch.Tensor, tops: list[int]) -> list[TokenInfo]:
    """TokenInfo for row i: ``tokens[i]``'s logprob in ``logprobs[i]`` [N, I] and its
    ``tops[i]`` most likely alternatives."""
    chosen = logprobs.gather(-1, tokens[:, None])[:, 0].tolist()
    token_list = tokens.tolist()
    k = min(max(tops, default=0), logprobs.shape[-1])
    if k == 0:
        return [TokenInfo(t, lp) for t, lp in zip(token_list, chosen, strict=True)]
    values, indices = torch.topk(logprobs, k, dim=-1)
    values, indices = values.tolist(), indices.tolist()
    return [
        TokenInfo(t, lp, tuple(zip(indices[i][:n], values[i][:n], strict=True)))
        for i, (t, lp, n) in enumerate(zip(token_list, chosen, tops, strict=True))
    ]


__all__ = [
    "INVALID_DRAW",
    "TokenInfo",
    "draw_rows",
    "grouped_process_logits",
    "sampling_groups",
    "token_infos",
]
