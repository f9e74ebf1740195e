"""torchrun and process groups: collectives on the backend's device, clean exits, no hangs."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
import torch
import torch.distributed as dist
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map

from lmforge.config import resolve_config
from lmforge.evaluation import mean_loss
from lmforge.models.base import build_model
from lmforge.training.distributed import DistributedInfo
from lmforge.training.trainer import Trainer, prepare_data

FAKE_GPU = torch.device("cuda", 0)


class FakeGpuTensor(torch.Tensor):
    """A tensor that says it lives on ``cuda:0`` and keeps its data in a CPU tensor."""

    @staticmethod
    def __new__(cls, data: torch.Tensor) -> FakeGpuTensor:
        wrapper = torch.Tensor._make_wrapper_subclass
        return wrapper(cls, data.shape, dtype=data.dtype, device=FAKE_GPU)

    def __init__(self, data: torch.Tensor) -> None:
        self.data_on_cpu = data

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):  # FakeGpu handles every op
        raise NotImplementedError(func)


class FakeGpu(TorchDispatchMode):
    """A GPU for a machine without one: ``.to("cuda")`` makes a :class:`FakeGpuTensor`, and ops
    on those run on the CPU and stay "on the GPU"."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        target = kwargs.get("device")
        to_gpu = func is torch.ops.aten._to_copy.default and target is not None
        to_gpu = to_gpu and torch.device(target).type == "cuda"
        if to_gpu:
            kwargs = {**kwargs, "device": torch.device("cpu")}
        touched = False

        def unwrap(value):
            nonlocal touched
            if isinstance(value, FakeGpuTensor):
                touched = True
                return value.data_on_cpu
            return value

        out = func(*tree_map(unwrap, args), **tree_map(unwrap, kwargs))
        leaves_gpu = func is torch.ops.aten._to_copy.default and target is not None and not to_gpu
        if to_gpu or (touched and not leaves_gpu and func is not torch.ops.aten.copy_.default):
            return tree_map(lambda t: FakeGpuTensor(t) if isinstance(t, torch.Tensor) else t, out)
        return out


@contextlib.contextmanager
def fake_nccl(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[torch.device]]:
    """Two ranks on fake GPUs, whose collectives refuse tensors off the GPU as NCCL does; the
    other rank contributes the same values as this one. Yields the devices reduced on."""
    monkeypatch.setattr(torch.cuda, "_lazy_init", lambda: None)  # no CUDA build needed
    reduced_on: list[torch.device] = []

    def all_reduce(tensor, op=dist.ReduceOp.SUM, group=None, async_op=False):
        reduced_on.append(tensor.device)
        if tensor.device != FAKE_GPU:
            raise RuntimeError(f"No backend type associated with device type {tensor.device.type}")
        if op == dist.ReduceOp.SUM:
            tensor.mul_(2)

    def all_gather_object(out, value, group=None):
        out[:] = [value] * len(out)

    monkeypatch.setattr(dist, "all_reduce", all_reduce)
    monkeypatch.setattr(dist, "all_gather_object", all_gather_object)
    monkeypatch.setattr(dist, "broadcast_object_list", lambda box, src=0, group=None: None)
    monkeypatch.setattr(dist, "barrier", lambda group=None: None)
    with FakeGpu():
        yield reduced_on


def small_trainer(corpus, out) -> Trainer:
    config = resolve_config(
        {
            "out": str(out),
            "data": {"corpus": str(corpus)},
            "model": {"family": "gru", "n_embd": 8, "n_hidden": 16, "n_layer": 1},
            "train": {"max_steps": 3, "batch_size": 4, "block_size": 8, "eval_iters": 4},
        }
    )
    tokenizer, stream = prepare_data(config, progress=False)
    model = build_model(vocab_size=tokenizer.vocab_size, **config.model)
    return Trainer(config, model, tokenizer, stream, progress=False)


def test_every_trainer_collective_reduces_on_the_gpu_the_backend_serves(
    tiny_corpus, tmp_path, monkeypatch
):
    trainer = small_trainer(tiny_corpus, tmp_path / "run")
    own_batches = trainer.val_batches[0::2]  # rank 0's share
    expected_val, _ = mean_loss(trainer.model, own_batches, trainer.device, trainer.dtype)
    trainer.step = 3
    with fake_nccl(monkeypatch) as reduced_on:
        monkeypatch.setattr(trainer, "info", DistributedInfo(0, 0, 2, FAKE_GPU))
        assert trainer._stop_signals(elapsed=0.0, step_time=0.0) == (False, True)
        assert trainer._check_finite([torch.tensor(1.5), torch.tensor(2.5)]) == 2.0
        assert trainer._mean_loss(trainer.val_batches) == pytest.approx(expected_val, rel=1e-12)
        assert len(trainer.state_dict()["torch_rng"]) == 2
    assert reduced_on == [FAKE_GPU] * 3
