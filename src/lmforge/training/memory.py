"""A lower bound on the memory a training run needs, checked before any weight is allocated.

A word-level bigram on WikiText-2 is a 33,278 × 33,278 table: 4.4 GB of weights, as much again
for their gradients, twice that for AdamW's moments, and its default batch of 256 × 128 windows
makes [32768, 33278] logits (4.4 GB each, and the loss needs at least two). Without this check
such a run tokenizes, builds, and dies minutes later inside a step with an allocator traceback;
with it, it stops at once with the numbers and the flags that fix it.

The bound counts only what must exist together at the peak of a step (weights, gradients,
optimizer state, and the logits of models that materialise them), so a run it refuses cannot
fit; a run it accepts may still run out on activations it does not count.

>>> from lmforge.config import TrainConfig
>>> with torch.device("meta"):
...     model = build_model("bigram", vocab_size=33278)
>>> need = training_memory(model, TrainConfig(batch_size=256, block_size=128))
>>> round(need.total / 1e9, 1)
26.4
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from lmforge.config import TrainConfig
from lmforge.errors import ConfigError, readable_bytes
from lmforge.losses import fused_output_head
from lmforge.models.base import LanguageModel

MEMINFO = Path("/proc/meminfo")
FLOAT32_BYTES = 4
# the loss keeps the logits' log-softmax, and backward makes their gradient: ≥ 2 copies
LOGIT_COPIES = 2


@dataclasses.dataclass(frozen=True)
class TrainingMemory:
    """Bytes that must coexist at the peak of one training step, by what holds them."""

    weights: int
    gradients: int
    optimizer: int
    logits: int

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.logits

    def describe(self) -> str:
        """The nonzero parts, e.g. ``weights 4.4 GB, gradients 4.4 GB, logits 8.7 GB``."""
        parts = dataclasses.asdict(self).items()
        return ", ".join(f"{name} {readable_bytes(size)}" for name, size in parts if size)


def training_memory(
    model: LanguageModel, config: TrainConfig, world_size: int = 1
) -> TrainingMemory:
    """The lower bound for training ``model`` (built on any device, ``meta`` included) with
    ``config`` on each of ``world_size`` ranks."""
    weights = sum(p.numel() * p.element_size() for p in model.parameters())  # tied: once
    trainable = 0 if config.freeze else weights
    if config.strategy == "fsdp" and world_size > 1:
        weights, trainable = weights // world_size, trainable // world_size
    moments = 2 if config.optimizer == "adamw" else int(config.momentum > 0)
    logits = 0
    if fused_output_head(model) is None:
        rows = max(1, config.batch_size // world_size)
        vocab = model.config.vocab_size
        logits = rows * config.block_size * vocab * FLOAT32_BYTES * LOGIT_COPIES
    return TrainingMemory(weights, trainable, trainable * moments, logits)


def available_memory(device: torch.device) -> int | None:
    """Bytes free for a new allocation on ``device``: Linux's MemAvailable for the CPU, the
    driver's free memory for CUDA; None where it cannot be known (macOS, MPS)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free
    if device.type != "cpu" or not MEMINFO.is_file():
        return None
    for line in MEMINFO.read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return None


def check_training_memory(
    model: LanguageModel, config: TrainConfig, device: torch.device, world_size: int = 1
) -> None:
    """Raise a one-line :class:`ConfigError` when the run cannot fit in ``device``'s memory."""
    available = available_memory(device)
    need = training_memory(model, config, world_size)
    if available is None or need.total <= available:
        return
    fixes = ["lower --batch-size or --block-size"] if need.logits else []
    if need.total - need.logits > available // 2:  # the model itself is the problem
        options = dataclasses.asdict(model.config)
        if options.get("n_embd", 0) is None:  # a vocabulary-wide table: the size is I × I
            fixes.append("set --n-embd (e.g. 256)")
        fixes.append("use a smaller model or vocabulary (e.g. --tokenizer bpe)")
    raise ConfigError(
        f"training needs at least {readable_bytes(need.total)} ({need.describe()}; "
        f"{model.num_parameters():,} parameters, {model.config.vocab_size:,}-token vocabulary) "
        f"but {device.type} has {readable_bytes(available)} free: {', or '.join(fixes)}"
    )
