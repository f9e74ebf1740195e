"""Multi-process training with PyTorch's own engine: ``torchrun`` + DistributedDataParallel.

``torchrun --nproc_per_node N -m lmforge train ...`` starts N processes with ``RANK``,
``LOCAL_RANK`` and ``WORLD_SIZE`` set; :func:`init_distributed` joins them into one process group
(NCCL on CUDA, gloo on CPU). Without those variables everything runs in one process and the
helpers here do nothing.

The collectives take tensors wherever the caller keeps them and reduce them on the device the
backend serves (NCCL accepts only tensors on the process's own GPU).

>>> with process_group("auto") as info:
...     info.world_size, info.is_main
(1, True)
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import importlib
import os
import sys
from collections.abc import Iterator
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


class PeerFailed(LmforgeError):
    """Another process of the torchrun job failed, so this one cannot go on."""


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
        # DistributedDataParallel imports torch._dynamo, and that import, made while a process
        # group exists, keeps the group alive after destroy_process_group: its gloo threads
        # then outlive the interpreter and sometimes abort the process at exit. Imported
        # first, it holds nothing.
        importlib.import_module("torch._dynamo")

        # binding the GPU lets barrier() and the object collectives use it without guessing
        bound = device if backend == "nccl" else None
        dist.init_process_group(backend=backend, device_id=bound)
        global _joined_a_job
        _joined_a_job = True
    return DistributedInfo(rank, local_rank, world_size, device)


@contextlib.contextmanager
def process_group(device_request: str | None) -> Iterator[DistributedInfo]:
    """Join the torchrun job for the span of a ``with`` block, then leave it cleanly.

    A rank whose collective fails because another process went away stops with one line
    instead of a backend traceback. A block that raises leaves the group as it is: once
    destroyed, the group is freed with the last object holding it (DDP's reducer, in the
    failed frames), and its destructor joins backend threads that can wait forever on a peer
    that has stopped. The failed process exits without teardown instead (the command line
    does), which closes its connections, so its peers' collectives fail.
    """
    info = init_distributed(device_request)
    try:
        yield info
    except RuntimeError as exc:
        if info.enabled and _lost_a_peer(exc):
            raise PeerFailed(
                f"process {info.rank} stopped because another process of the job failed; "
                "its error is shown above"
            ) from None
        raise
    shutdown_distributed(info)


def _lost_a_peer(exc: RuntimeError) -> bool:
    """Whether ``exc`` is a collective failing because another process went away."""
    message = str(exc)
    return isinstance(exc, dist.DistNetworkError) or any(
        sign in message for sign in ("Connection closed by peer", "Connection reset by peer")
    )


def shutdown_distributed(info: DistributedInfo) -> None:
    """Leave the process group (end of training)."""
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


_joined_a_job = False


def joined_a_job() -> bool:
    """Whether this process has joined a multi-process job (and so holds backend threads)."""
    return _joined_a_job


def exit_without_teardown(code: int) -> None:
    """End the process with ``code`` when the interpreter exits, skipping its teardown.

    A rank whose peer failed mid-collective is left with backend threads that nothing can
    join; tearing the interpreter and torch's C++ state down under them aborts the process
    ("terminate called without an active exception"). Every file lmforge writes is closed
    by then, so only the standard streams need flushing.
    """
    atexit.register(exit_now, code)


def exit_now(code: int) -> None:
    """End the process with ``code`` at once, flushing only the standard streams.

    A rank whose command raised calls this before the exception is freed: freeing it frees
    the frames that hold the model and, through DDP, the backend, whose destructor can wait
    forever for a peer that has stopped.
    """
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


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
    rank 0 is raised on every rank; any other exception is raised on rank 0 as it is (with its
    traceback) and stops the other ranks with one line, so no process is left waiting."""
    result, error = None, None
    if info.is_main:
        try:
            result = work()
        except Exception as exc:
            if not info.enabled:
                raise
            ours = isinstance(exc, LmforgeError)
            # only lmforge's own classes travel: another rank may not be able to import the rest
            error = (type(exc) if ours else None, type(exc).__name__, str(exc))
            if not ours:
                with contextlib.suppress(RuntimeError):  # a peer already gone needs no word
                    broadcast_object(info, error)
                raise
    error = broadcast_object(info, error)
    if error is not None:
        kind, name, message = error
        if kind is not None:
            raise kind(message)
        raise PeerFailed(
            f"process {info.rank} stopped because process 0 failed ({name}: {message}); "
            "its error is shown above"
        )
    return result
