"""``--strategy fsdp``: parameters, gradients and optimizer state sharded across the ranks
with PyTorch's own FSDP2 (``torch.distributed.fsdp.fully_shard``).

Each Transformer block is one unit (its weights are gathered for its forward and backward and
freed after), then the root holds the rest (embeddings, final norm, head). Checkpoints gather
the full weights to rank 0 and write the same safetensors layout as any run; the trainer state
holds the full weights and optimizer state (keyed by parameter name), so a sharded run
resumes exactly, with the same number of processes.

>>> shard(model)                          # on every rank, after the model is built
>>> weights = full_weights(model)         # collective; the unsharded model on rank 0 only
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lmforge.models.base import LanguageModel, model_from_config

STRATEGIES = ("ddp", "fsdp")


def _options() -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    # the whole tensors, on the CPU: on rank 0 only (the others get nothing)
    return StateDictOptions(full_state_dict=True, cpu_offload=True)


def shard(model: LanguageModel) -> None:
    """Shard ``model`` in place across the process group: each Transformer block, then the
    root (for other model families, the root alone)."""
    from torch.distributed.fsdp import fully_shard

    from lmforge.models.transformer import Block

    for module in model.modules():
        if isinstance(module, Block):
            fully_shard(module)
    fully_shard(model)


def is_sharded(model: nn.Module) -> bool:
    """Whether ``model``'s parameters are FSDP shards."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


def local(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's part of ``tensor`` (a shard), or ``tensor`` itself."""
    from torch.distributed.tensor import DTensor

    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def full_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole weights by name, on the CPU, on rank 0 (empty elsewhere); collective."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(model, options=_options())


def full_weights(model: LanguageModel) -> LanguageModel | None:
    """An unsharded CPU copy of ``model`` on rank 0 (None elsewhere), for writing its weights
    in the usual layout (tied weights once); collective."""
    state = full_state(model)
    if not state:
        return None
    with torch.random.fork_rng(devices=[]):  # its random initial weights leave no trace
        copy = model_from_config(model.config_dict())
    copy.load_state_dict(state)
    return copy


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The whole optimizer state keyed by parameter name, on rank 0 (empty elsewhere);
    collective. An optimizer without state yet is given one by a step with zero gradients
    and learning rate (PyTorch's way), which counts as a step for Adam: call it after the
    first real step only."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=_options())


def load_full_state(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    weights: dict[str, torch.Tensor],
    optimizer_state: dict[str, Any],
) -> None:
    """Load whole weights and optimizer state (as saved by :func:`full_state` and
    :func:`full_optimizer_state`, given on every rank) into the sharded ``model`` and its
    ``optimizer``; each rank keeps its shard."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True)
    set_model_state_dict(model, weights, options=options)
    if optimizer_state:  # empty: saved before the first step
        set_optimizer_state_dict(model, optimizer, optimizer_state, options=options)
