"""torchrun and process groups: collectives on the backend's device, clean exits, no hangs."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map

from lmforge.config import resolve_config
from lmforge.evaluation import mean_loss
from lmforge.models.base import build_model
from lmforge.training import distributed
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


# -- real two-process jobs (gloo) ---------------------------------------------------------------

GLOO_AVAILABLE = dist.is_available() and dist.is_gloo_available()
TINY_TRANSFORMER = [
    "--model", "transformer", "--n-layer", "1", "--n-head", "2", "--n-embd", "16",
    "--batch-size", "4", "--block-size", "16", "--eval-iters", "1", "--device", "cpu", "--quiet",
]  # fmt: skip

FAULTY_LMFORGE = """
import os, sys
from lmforge.cli import main
from lmforge.training import trainer

where, args = sys.argv[1], sys.argv[2:]
if os.environ["RANK"] == "0":
    if where == "prepare":  # inside run_on_main
        def prepare_data(*_, **__):
            raise OSError(28, "No space left on device (injected on rank 0)")
        trainer.prepare_data = prepare_data
    else:  # inside the training loop, while rank 1 waits in a collective
        train_step = trainer.Trainer._train_step
        def faulty_step(self, lr):
            if self.step == 3:
                raise RuntimeError("injected fault on rank 0")
            return train_step(self, lr)
        trainer.Trainer._train_step = faulty_step
sys.exit(main(args))
"""


GLOO_THREADS_LEFT = """
import atexit, os, sys
from lmforge.cli import main

atexit.register(print, "interpreter teardown ran", file=sys.stderr)

code = main(sys.argv[1:])
names = [open(f"/proc/self/task/{t}/comm").read().strip() for t in os.listdir("/proc/self/task")]
print("gloo threads left:", sorted(name for name in names if "gloo" in name), file=sys.stderr)
sys.exit(code)
"""


def stderr_after_abort(proc: subprocess.Popen) -> str:
    """The end of a rank's stderr once it has stopped (killed if SIGABRT did not end it)."""
    try:
        return proc.communicate(timeout=10)[1][-4000:]
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.communicate()[1][-4000:]


def run_two_ranks(script: Path, *args: str, timeout: float = 120) -> list[tuple[int, str]]:
    """Run ``script args`` as ranks 0 and 1 of a gloo job, without a launcher that could end a
    rank: each must stop by itself. Returns each rank's (exit code, stderr); a job still
    running after ``timeout`` seconds fails the test with every rank's Python stacks."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    ranks = []
    for rank in range(2):
        env = {
            **os.environ,
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": "2",
            "OMP_NUM_THREADS": "1",
            "PYTHONFAULTHANDLER": "1",  # SIGABRT prints every thread's Python stack
        }
        command = [sys.executable, str(script), *args]
        ranks.append(subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True))
    deadline = time.monotonic() + timeout
    try:
        errors = [
            proc.communicate(timeout=max(deadline - time.monotonic(), 0.1))[1] for proc in ranks
        ]
    except subprocess.TimeoutExpired:
        stuck = [rank for rank, proc in enumerate(ranks) if proc.poll() is None]
        for rank in stuck:
            ranks[rank].send_signal(signal.SIGABRT)
        tails = [f"rank {rank}:\n{stderr_after_abort(proc)}" for rank, proc in enumerate(ranks)]
        pytest.fail(f"ranks {stuck} still running after {timeout} s\n" + "\n".join(tails))
    finally:
        for proc in ranks:
            proc.kill()
    return [(proc.returncode, error) for proc, error in zip(ranks, errors, strict=True)]


@pytest.mark.skipif(not GLOO_AVAILABLE, reason="no gloo backend")
@pytest.mark.parametrize("where", ["prepare", "loop"])
def test_an_unexpected_error_on_rank_0_stops_the_other_rank_with_one_line(
    where, tiny_corpus, tmp_path
):
    script = tmp_path / "faulty_lmforge.py"
    script.write_text(FAULTY_LMFORGE)
    train = ["train", "--corpus", str(tiny_corpus), "--out", str(tmp_path / "run")]
    (code0, error0), (code1, error1) = run_two_ranks(script, where, *train, *TINY_TRANSFORMER)
    injected = "No space left on device" if where == "prepare" else "injected fault on rank 0"
    assert code0 == 1 and "Traceback" in error0 and injected in error0
    assert code1 == 2, error1[-3000:]
    lines = error1.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in error1, error1[-3000:]
    assert lines[0].startswith("lmforge: error: process 1 stopped because")
    assert lines[0].endswith("its error is shown above")


@pytest.mark.skipif(not GLOO_AVAILABLE, reason="no gloo backend")
@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux's /proc")
def test_no_gloo_thread_outlives_a_two_process_training(tiny_corpus, tmp_path):
    # Threads left when the interpreter exits sometimes aborted a rank after a finished run
    # ("terminate called without an active exception").
    script = tmp_path / "gloo_threads_left.py"
    script.write_text(GLOO_THREADS_LEFT)
    train = ["train", "--corpus", str(tiny_corpus), "--out", str(tmp_path / "run")]
    for code, error in run_two_ranks(script, *train, "--max-steps", "2", *TINY_TRANSFORMER):
        assert code == 0, error[-3000:]
        assert "gloo threads left: []" in error, error[-3000:]
        assert "interpreter teardown ran" not in error


@pytest.mark.skipif(not GLOO_AVAILABLE, reason="no gloo backend")
def test_ten_two_process_runs_in_a_row_all_exit_cleanly(tiny_corpus, tmp_path):
    # A rank used to abort now and then at interpreter exit ("terminate called without an
    # active exception") after training had finished; each run must exit 0 on both ranks.
    script = tmp_path / "lmforge_rank.py"
    script.write_text("import sys\nfrom lmforge.cli import main\nsys.exit(main())\n")
    for attempt in range(10):
        out = tmp_path / f"run{attempt}"
        train = ["train", "--corpus", str(tiny_corpus), "--out", str(out), "--max-steps", "4"]
        for rank, (code, error) in enumerate(run_two_ranks(script, *train, *TINY_TRANSFORMER)):
            assert code == 0, f"run {attempt}, rank {rank}: {error[-3000:]}"
            assert "terminate called" not in error
        assert (out / "model.safetensors").is_file()


def test_a_rank_that_lost_its_peer_says_so_in_one_line(monkeypatch):
    monkeypatch.setattr(distributed, "init_distributed", lambda _: DistributedInfo(1, 1, 2))
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    lost = "[pair.cc:553] Connection closed by peer [127.0.0.1]:3258"
    failed = pytest.raises(distributed.PeerFailed, match=r"^process 1 stopped because another")
    with failed, distributed.process_group("cpu"):
        raise RuntimeError(lost)
    with pytest.raises(RuntimeError, match="a bug"), distributed.process_group("cpu"):
        raise RuntimeError("a bug")


def test_a_rank_that_fails_leaves_the_group_without_waiting_on_its_peers(monkeypatch):
    # a destroyed group is freed with the last object holding it (DDP, in the failed frames),
    # and its destructor joins backend threads that can wait forever on a stopped peer
    monkeypatch.setattr(distributed, "init_distributed", lambda _: DistributedInfo(0, 0, 2))
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    destroyed = []
    monkeypatch.setattr(dist, "destroy_process_group", lambda: destroyed.append(True))
    for failure in (RuntimeError("a bug"), OSError(28, "No space left on device"), KeyError(1)):
        with pytest.raises(type(failure)), distributed.process_group("cpu"):
            raise failure
    assert destroyed == []
    with distributed.process_group("cpu"):
        pass
    assert destroyed == [True]


EXIT_AFTER_A_JOB = """
import atexit, sys, weakref
import lmforge.cli
from lmforge.training import distributed

atexit.register(print, "interpreter teardown ran", file=sys.stderr)
distributed._joined_a_job = True  # what init_distributed records once it joins a job
if sys.argv[1] == "crash":
    class Model:  # stands for what the failed frames hold: the model, DDP, the backend
        pass

    def crash(*_):
        model = Model()
        weakref.finalize(model, print, "the failed frames were freed", file=sys.stderr)
        1 / 0

    lmforge.cli._run_command = crash
sys.exit(lmforge.cli.main(sys.argv[2:]))
"""


@pytest.mark.parametrize(
    ("how", "code", "says"),
    [("error", 2, "lmforge: error: run directory not found"), ("crash", 1, "ZeroDivisionError")],
)
def test_a_rank_that_joined_a_job_exits_with_its_code_and_skips_teardown(how, code, says, tmp_path):
    # Backend threads that a failed peer leaves behind abort the interpreter's teardown.
    script = tmp_path / "rank.py"
    script.write_text(EXIT_AFTER_A_JOB)
    command = [sys.executable, str(script), how, "sample", "no-such-run"]
    done = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == code, done.stderr[-3000:]
    assert says in done.stderr
    assert ("Traceback" in done.stderr) == (how == "crash")
    assert "interpreter teardown ran" not in done.stderr
    # freeing them runs the backend's destructor, which may wait forever on a stopped peer
    assert "the failed frames were freed" not in done.stderr
