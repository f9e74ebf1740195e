"""Faults during training: NaN gradients, a full disk, SIGKILL at chosen moments, and the
trainer's own temporary files."""

import errno
import os
import random
import signal

import pytest
import torch
from safetensors import safe_open

from lmforge import fileio
from lmforge.cli import main
from lmforge.config import resolve_config
from lmforge.errors import TrainingError
from lmforge.runs import load_run
from lmforge.training import loop, train
from lmforge.training.checkpoint import MetricsLog, load_trainer_state, read_metrics
from lmforge.training.optimizer import make_optimizer


def tiny_config(corpus, out, **train_options):
    return resolve_config(
        {
            "out": str(out),
            "data": {"corpus": str(corpus)},
            "model": {"family": "lstm", "n_embd": 8, "n_hidden": 16, "n_layer": 1},
            "train": {
                "max_steps": 30,
                "batch_size": 4,
                "block_size": 8,
                "eval_interval": 10,
                "eval_iters": 1,
                "log_interval": 5,
                "learning_rate": 1e-2,
                "device": "cpu",
                **train_options,
            },
        }
    )


def tiny_args(corpus, out, *extra):
    return [
        "train",
        "--corpus",
        str(corpus),
        "--out",
        str(out),
        "--model",
        "lstm",
        "--n-embd",
        "8",
        "--n-hidden",
        "16",
        "--n-layer",
        "1",
        "--batch-size",
        "4",
        "--block-size",
        "8",
        "--eval-iters",
        "1",
        "--learning-rate",
        "1e-2",
        "--device",
        "cpu",
        "--quiet",
        *extra,
    ]


def assert_loadable_and_finite(run_dir):
    """The run's checkpoint loads, its weights are finite and agree with the trainer state's."""
    state = load_trainer_state(run_dir / "trainer_state.pt")
    for tensor in state["model"].values():
        assert torch.isfinite(tensor).all()
    for checkpoint in ("final", "best"):
        if (run_dir / f"{'model' if checkpoint == 'final' else 'best'}.safetensors").is_file():
            model = load_run(run_dir, checkpoint=checkpoint, device="cpu").model
            assert all(torch.isfinite(p).all() for p in model.parameters())
    return state


@pytest.mark.parametrize("poison", [float("nan"), float("inf")])
def test_poisoned_gradients_stop_the_run_and_keep_the_last_finite_checkpoint(
    poison, tiny_corpus, tmp_path, monkeypatch
):
    backward_calls = {"n": 0}

    def optimizer_with_a_poisoned_gradient(model, config, device):
        def poison_the_20th(grad):
            backward_calls["n"] += 1
            return torch.full_like(grad, poison) if backward_calls["n"] == 20 else grad

        next(model.parameters()).register_hook(poison_the_20th)
        return make_optimizer(model, config, device)

    # the 20th update is the one before the evaluation (and checkpoint) of step 20: the losses
    # logged so far are all finite, only the weights are not
    monkeypatch.setattr(loop, "make_optimizer", optimizer_with_a_poisoned_gradient)
    run_dir = tmp_path / "run"
    with pytest.raises(TrainingError) as caught:
        train(tiny_config(tiny_corpus, run_dir), progress=False)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("the weights (") and "became infinite or NaN by step 20" in message
    assert f"the last good checkpoint (step 10) is kept in {run_dir}" in message
    state = assert_loadable_and_finite(run_dir)
    assert state["step"] == 10
    weights = load_run(run_dir, checkpoint="final", device="cpu").model.state_dict()
    assert all(torch.equal(weights[name], state["model"][name]) for name in weights)
    assert [r["step"] for r in read_metrics(run_dir / "metrics.jsonl")] == [0, 5, 10, 15]


def test_a_full_disk_keeps_the_previous_checkpoint_and_says_so(
    tiny_corpus, tmp_path, monkeypatch, capsys
):
    run_dir = tmp_path / "run"
    real_save_weights = loop.save_weights
    writes = {"n": 0}

    def disk_fills_up_at_the_third_checkpoint(model, path, **meta):
        writes["n"] += 1
        if writes["n"] < 3:
            return real_save_weights(model, path, **meta)

        def half_then_enospc(tmp):
            tmp.write_bytes(b"\0" * 100)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        fileio.atomic_write_with(path, half_then_enospc)

    monkeypatch.setattr(loop, "save_weights", disk_fills_up_at_the_third_checkpoint)
    args = tiny_args(tiny_corpus, run_dir, "--max-steps", "30", "--eval-interval", "10")
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "lmforge: error: could not write the checkpoint of step 20 (No space left on device); "
        f"the last good checkpoint (step 10) is kept in {run_dir}; free some space, then "
        f"continue with --resume {run_dir}"
    )
    state = assert_loadable_and_finite(run_dir)
    assert state["step"] == 10
    with safe_open(str(run_dir / "model.safetensors"), "pt") as weights:
        assert weights.metadata()["step"] == "10"
    assert not list(run_dir.glob(".*.tmp"))
    monkeypatch.undo()
    assert main(["train", "--resume", str(run_dir), "--quiet"]) == 0
    assert load_trainer_state(run_dir / "trainer_state.pt")["step"] == 30


def test_a_full_disk_while_logging_keeps_the_checkpoint_and_says_so(
    tiny_corpus, tmp_path, monkeypatch, capsys
):
    run_dir = tmp_path / "run"
    real_append = MetricsLog.append
    appends = {"n": 0}

    def disk_fills_up_at_the_fifth_record(self, record):
        appends["n"] += 1
        if appends["n"] < 5:
            return real_append(self, record)
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write('{"step": ')  # a torn line, as a write cut short leaves
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(MetricsLog, "append", disk_fills_up_at_the_fifth_record)
    args = tiny_args(
        tiny_corpus, run_dir, "--max-steps", "30", "--eval-interval", "10", "--log-interval", "5"
    )
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    assert err.startswith("lmforge: error: could not add the record of step ")
    assert "(No space left on device)" in err and f"--resume {run_dir}" in err
    assert "the last good checkpoint (step 10) is kept" in err
    assert assert_loadable_and_finite(run_dir)["step"] == 10
    monkeypatch.undo()
    assert main(["train", "--resume", str(run_dir), "--quiet"]) == 0
    steps = [r["step"] for r in read_metrics(run_dir / "metrics.jsonl")]
    assert steps == sorted(set(steps)) and steps[-1] == 30


def test_best_weights_are_written_atomically(tiny_corpus, tmp_path, monkeypatch):
    committed = []
    monkeypatch.setattr(fileio, "before_rename", [lambda tmp, target: committed.append(target)])
    train(tiny_config(tiny_corpus, tmp_path / "run", max_steps=10), progress=False)
    # best.safetensors went through atomic_path (temporary file, fsync, rename) like the rest
    assert committed.count(tmp_path / "run" / "best.safetensors") >= 1
    best = load_run(tmp_path / "run", checkpoint="best", device="cpu").model.state_dict()
    final = load_run(tmp_path / "run", checkpoint="final", device="cpu").model.state_dict()
    state = load_trainer_state(tmp_path / "run" / "trainer_state.pt")
    if state["best_val_loss"] == state["last_val_loss"]:
        assert all(torch.equal(best[k], final[k]) for k in best)


def test_resume_removes_only_the_trainers_own_temporary_files(tiny_corpus, tmp_path):
    run_dir = tmp_path / "run"
    train(tiny_config(tiny_corpus, run_dir, max_steps=5, eval_interval=5), progress=False)
    torn = [run_dir / ".trainer_state.pt.k3j_x9a1.tmp", run_dir / ".model.safetensors.0123abcd.tmp"]
    theirs = [run_dir / ".notes.tmp", run_dir / ".model.safetensors.my-backup.tmp"]
    for path in torn + theirs:
        path.write_bytes(b"x")
    assert main(["train", "--resume", str(run_dir), "--max-steps", "10", "--quiet"]) == 0
    assert not any(path.exists() for path in torn)
    assert all(path.read_bytes() == b"x" for path in theirs)


KILL_POINTS = [
    "step",
    "record",
    "model.safetensors.tmp",
    "model.safetensors",
    "best.safetensors.tmp",
    "best.safetensors",
    "trainer_state.pt.tmp",
    "trainer_state.pt",
]


def train_in_a_child(args, fault):
    """Run ``lmforge train`` in a forked child (torch is already imported) with the fault
    planted; return how it ended (``-signal.SIGKILL`` when the fault fired)."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            os.environ["LMFORGE_TEST_FAULT"] = fault
            code = main(args)
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_sigkill_at_20_random_moments_always_leaves_a_run_that_resumes_exactly(
    tiny_corpus, tmp_path
):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same arithmetic in the children as in this process
    try:
        extra = ["--max-steps", "48", "--eval-interval", "2", "--log-interval", "1"]
        extra += ["--dropout", "0.1"]
        assert main(tiny_args(tiny_corpus, tmp_path / "whole", *extra)) == 0
        run_dir = tmp_path / "cut"
        args = tiny_args(tiny_corpus, run_dir, *extra)
        rng = random.Random(8)
        kills, saved_step = [], 0
        for attempt in range(20):
            point, step = rng.choice(KILL_POINTS), 2 * attempt + rng.randint(0, 2)
            kills.append(f"kill:{point}@{step}")
            ended = train_in_a_child(args, kills[-1])
            assert ended == -signal.SIGKILL, f"{kills[-1]} did not fire ({ended})"
            state = assert_loadable_and_finite(run_dir)
            assert state["step"] >= saved_step  # a kill never loses a finished checkpoint
            saved_step = state["step"]
            args = ["train", "--resume", str(run_dir), "--quiet"]
        assert main(args) == 0
    finally:
        torch.set_num_threads(threads)
    assert not list(run_dir.glob(".*.tmp"))
    whole = read_metrics(tmp_path / "whole" / "metrics.jsonl")
    cut = read_metrics(run_dir / "metrics.jsonl")
    assert [r["step"] for r in cut] == [r["step"] for r in whole] == list(range(49))
    for a, b in zip(whole, cut, strict=True):
        assert (a["train_loss"], a.get("val_loss")) == (b["train_loss"], b.get("val_loss"))
