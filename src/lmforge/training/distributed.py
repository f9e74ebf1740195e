"""Multi-process training with PyTorch's own engine: ``torchrun`` + DistributedDataParallel.

``torchrun --nproc_per_node N -m lmforge train ...`` starts N processes with ``RANK``,
``LOCAL_RANK`` and ``WORLD_SIZE`` set; :func:`init_distributed` joins them into one process group
(NCCL on CUDA, gloo on CPU). Without those variables everything runs in one process and the
helpers here do nothing.

The collectives take tensors wherever the caller keeps them and reduce them on the device the
backend serves (NCCL accepts only tensors on the process's own GPU).

>>> info = init_distributed("auto")
>>> info.world_size, info.is_main
(1, True)
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import torch
import torch.distributed as dist

from lmforge.device import pick_device
from lmforge.errors import ConfigError, LmforgeError


@dataclasses.dataclass(frozen=True)
class DistributedInfo:
    """This process's place in the job."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that tokenizes, logs and writes checkpoints."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        """Whether more than one process takes part."""
        return self.world_size > 1


def init_distributed(device_request: str | None) -> DistributedInfo:
    """Join the torchrun job if there is one and pick this process's device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistributedInfo(device=pick_device(device_request))
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_request)
    if device.type == "cuda":
        if torch.cuda.device_count() <= local_rank:
            raise ConfigError(
                f"process {local_rank} has no GPU of its own ({torch.cuda.device_count()} "
                "visible); start at most one process per GPU"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    elif device.type == "cpu":
        backend = "gloo"
    else:
        raise ConfigError(f"distributed training runs on cuda or cpu, not {device.type}")
    if not dist.is_initialized():
        # binding the GPU lets barrier() and the object collectives use it without guessing
        bound = device if backend == "nccl" else None
        dist.init_process_group(backend=backend, device_id=bound)
    return DistributedInfo(rank, local_rank, world_size, device)


def shutdown_distributed(info: DistributedInfo) -> None:
    """Leave the process group (end of training)."""
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistributedInfo) -> None:
    """Wait for every process."""
    if info.enabled:
        dist.barrier()


def broadcast_object(info: DistributedInfo, value: Any) -> Any:
    """Rank 0's ``value``, on every rank."""
    if not info.enabled:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(info: DistributedInfo, value: Any) -> list[Any]:
    """Every rank's ``value``, in rank order, on every rank."""
    if not info.enabled:
        return [value]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, value)
    return out


def all_reduce_sum(info: DistributedInfo, tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over ranks, in place, on any device; returns it."""
    return _all_reduce(info, tensor, dist.ReduceOp.SUM)


def all_reduce_max(info: DistributedInfo, tensor: torch.Tensor) -> torch.Tensor:
    """Maximum of ``tensor`` over ranks, in place, on any device; returns it."""
    return _all_reduce(info, tensor, dist.ReduceOp.MAX)


def _all_reduce(info: DistributedInfo, tensor: torch.Tensor, op: Any) -> torch.Tensor:
    if not info.enabled:
        return tensor
    # the backend was chosen for info.device (NCCL for a GPU, gloo for the CPU)
    served = tensor.to(info.device)
    dist.all_reduce(served, op=op)
    if served is not tensor:
        tensor.copy_(served)
    return tensor


def run_on_main(info: DistributedInfo, work: Any) -> Any:
    """Run ``work()`` on rank 0 only; the other ranks wait. An :class:`LmforgeError` raised by
    rank 0 is raised on every rank, so no process is left waiting."""
    result, error = None, None
    if info.is_main:
        try:
            result = work()
        except LmforgeError as exc:
            error = (type(exc), str(exc))
            if not info.enabled:
                raise
    error = broadcast_object(info, error)
    if error is not None:
        kind, message = error
        raise kind(message)
    return result
