"""The optimizer factory: AdamW or SGD, with weight decay on matrices only."""

from __future__ import annotations

import torch

from lmforge.config import TrainConfig
from lmforge.models.base import LanguageModel
from lmforge.training.sharding import is_sharded


def make_optimizer(
    model: LanguageModel, config: TrainConfig, device: torch.device
) -> torch.optim.Optimizer:
    """AdamW or SGD; weight decay applies to matrices only (not biases or norm gains)."""
    params = {id(p): p for p in model.parameters() if p.requires_grad}.values()
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    groups = [g for g in groups if g["params"]]
    # one kernel per step instead of a dozen passes (FSDP's sharded tensors: only AdamW's)
    fused = device.type in ("cpu", "cuda") and not (config.optimizer == "sgd" and is_sharded(model))
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            groups, lr=config.learning_rate, momentum=config.momentum, fused=fused
        )
    return torch.optim.AdamW(
        groups, lr=config.learning_rate, betas=(config.beta1, config.beta2), fused=fused
    )
