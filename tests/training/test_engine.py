"""The training engine: exact resumption after Ctrl-C, crash safety, torchrun, TOML config."""

import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from lmforge.cli import main
from lmforge.config import resolve_config
from lmforge.runs import load_run
from lmforge.training.checkpoint import load_trainer_state, read_metrics

MODEL = ["--model", "lstm", "--n-embd", "32", "--n-hidden", "128", "--n-layer", "1"]


def train_args(corpus, out, *extra):
    return [
        "train",
        "--corpus",
        str(corpus),
        "--out",
        str(out),
        *MODEL,
        "--batch-size",
        "16",
        "--block-size",
        "64",
        "--eval-iters",
        "2",
        "--device",
        "cpu",
        "--quiet",
        *extra,
    ]


def lmforge(*args, **kwargs):
    return subprocess.Popen(
        [sys.executable, "-m", "lmforge", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def wait_for_step(metrics, step, proc, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        records = read_metrics(metrics)
        if records and records[-1]["step"] >= step:
            return records[-1]["step"]
        if proc.poll() is not None:
            pytest.fail(f"training ended early: {proc.stderr.read()}")
        time.sleep(0.01)
    pytest.fail("training did not reach the step in time")


def losses(run):
    return {
        r["step"]: (r["train_loss"], r.get("val_loss")) for r in read_metrics(run / "metrics.jsonl")
    }


@pytest.fixture
def corpus(tmp_path):
    from tests.conftest import markov_text

    path = tmp_path / "corpus.txt"
    path.write_text(markov_text(30_000, alphabet="abcdefghijklmnop \n"))
    return path


def test_ctrl_c_then_resume_logs_the_same_losses_as_an_uninterrupted_run(corpus, tmp_path):
    extra = [
        "--max-steps",
        "200",
        "--eval-interval",
        "50",
        "--log-interval",
        "1",
        "--dropout",
        "0.2",
    ]  # dropout: the RNG state must be restored too
    assert main(train_args(corpus, tmp_path / "whole", *extra)) == 0

    proc = lmforge(*train_args(corpus, tmp_path / "cut", *extra))
    wait_for_step(tmp_path / "cut" / "metrics.jsonl", 110, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "interrupted at step" in err and "--resume" in err
    stopped = load_trainer_state(tmp_path / "cut" / "trainer_state.pt")["step"]
    assert 110 <= stopped < 200

    assert main(["train", "--resume", str(tmp_path / "cut"), "--quiet"]) == 0
    whole, cut = losses(tmp_path / "whole"), losses(tmp_path / "cut")
    assert sorted(cut) == sorted(whole) == list(range(201))
    assert all(cut[s] == whole[s] for s in whole), [s for s in whole if cut[s] != whole[s]]


def test_sigkill_at_any_moment_leaves_a_loadable_checkpoint(corpus, tmp_path):
    run = tmp_path / "run"
    extra = ["--max-steps", "100000", "--eval-interval", "3", "--log-interval", "1"]
    for attempt, delay in enumerate((0.0, 0.13, 0.29, 0.41)):
        args = (
            train_args(corpus, run, *extra)
            if attempt == 0
            else ["train", "--resume", str(run), "--quiet"]
        )
        proc = lmforge(*args)
        first = wait_for_step(run / "metrics.jsonl", 4 + 7 * attempt, proc)
        time.sleep(delay)  # lands anywhere: mid-step, mid-evaluation or mid-write
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        state = load_trainer_state(run / "trainer_state.pt")
        assert state["step"] >= 3 and state["step"] <= first + 1000
        loaded = load_run(run, checkpoint="final", device="cpu")
        assert all(torch.isfinite(p).all() for p in loaded.model.parameters())
    # the run can still be resumed and finished, and leftovers of torn writes are cleared
    assert (
        main(
            [
                "train",
                "--resume",
                str(run),
                "--max-steps",
                str(load_trainer_state(run / "trainer_state.pt")["step"] + 6),
                "--quiet",
            ]
        )
        == 0
    )
    assert not list(run.glob(".*.tmp"))


def torchrun(*args, fault=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if fault:
        env["LMFORGE_TEST_FAULT"] = fault
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    proc = subprocess.run(
        [*launcher, "--standalone", "-m", "lmforge", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.skipif(not torch.distributed.is_available(), reason="no torch.distributed")
def test_two_gloo_processes_match_one_process_and_resume_exactly(corpus, tmp_path):
    extra = ["--max-steps", "40", "--eval-interval", "20", "--log-interval", "3"]
    extra += ["--dropout", "0", "--n-hidden", "32"]
    assert main(train_args(corpus, tmp_path / "one", *extra)) == 0
    torchrun(*train_args(corpus, tmp_path / "two", *extra))
    one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert sorted(one) == sorted(two) == sorted({*range(0, 40, 3), 20, 40})
    for step in one:
        assert two[step][0] == pytest.approx(one[step][0], abs=1e-4)
        if one[step][1] is not None:
            assert two[step][1] == pytest.approx(one[step][1], abs=1e-4)
    config = json.loads((tmp_path / "two" / "config.json").read_text())
    assert config["world_size"] == 2
    # Ctrl-C on rank 0 at step 13 (between two log lines), then a two-process resume: the
    # same records as the uninterrupted two-process run, exactly
    proc = torchrun(*train_args(corpus, tmp_path / "cut", *extra), fault="interrupt:step@13")
    assert "interrupted at step 13" in proc.stderr
    torchrun("train", "--resume", str(tmp_path / "cut"), "--quiet")
    assert losses(tmp_path / "cut") == two


def test_toml_config_with_flags_on_top_and_resolved_config_saved(corpus, tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text(f"""
out = "{tmp_path / "run"}"
[data]
corpus = "{corpus}"
[model]
family = "gru"
n_embd = 8
n_hidden = 24
n_layer = 1
[train]
batch_size = 4
block_size = 8
max_steps = 12
eval_interval = 6
learning_rate = 0.01
device = "cpu"
""")
    assert main(["train", "--config", str(toml), "--max-steps", "6", "--quiet"]) == 0
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["run"]["model"]["family"] == "gru"
    assert saved["run"]["model"]["n_hidden"] == 24
    assert saved["run"]["train"]["max_steps"] == 6  # the flag won over the file
    assert saved["run"]["train"]["learning_rate"] == 0.01
    assert saved["run"]["train"]["weight_decay"] == 0.1  # the family default filled in
    assert read_metrics(tmp_path / "run" / "metrics.jsonl")[-1]["step"] == 6
    # the saved config.json reproduces the run
    again = resolve_config({"out": str(tmp_path / "again")}, tmp_path / "run" / "config.json")
    assert again.model == saved["run"]["model"] and again.train.max_steps == 6


def test_bad_toml_is_a_one_line_error(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("[train]\nbatch_size = \n")
    assert main(["train", "--config", str(bad), "--out", str(tmp_path / "r")]) == 2
    assert "is not valid TOML" in capsys.readouterr().err
    bad.write_text("[trian]\nbatch_size = 3\n")
    assert main(["train", "--config", str(bad), "--out", str(tmp_path / "r")]) == 2
    assert "unknown key(s) trian" in capsys.readouterr().err
    bad.write_text("[train]\nbatch_sise = 3\n")
    assert main(["train", "--config", str(bad), "--out", str(tmp_path / "r")]) == 2
    assert "unknown train option(s): batch_sise" in capsys.readouterr().err


def test_plot_and_compare(corpus, tmp_path, capsys):
    for name, model in (("bigram", ["--model", "bigram"]), ("lstm", MODEL)):
        args = [
            "train",
            "--corpus",
            str(corpus),
            "--out",
            str(tmp_path / name),
            *model,
            "--batch-size",
            "8",
            "--block-size",
            "16",
            "--max-steps",
            "20",
            "--eval-interval",
            "10",
            "--eval-iters",
            "2",
            "--device",
            "cpu",
            "--quiet",
        ]
        assert main(args) == 0
    capsys.readouterr()
    assert main(["plot", str(tmp_path / "lstm")]) == 0
    assert capsys.readouterr().out.splitlines()[-3:] == [
        str(tmp_path / "lstm" / "loss.png"),
        str(tmp_path / "lstm" / "embeddings.png"),
        str(tmp_path / "lstm" / "neighbours.txt"),
    ]
    for png in ("loss.png", "embeddings.png"):
        data = (tmp_path / "lstm" / png).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 10_000
    out = tmp_path / "cmp.png"
    assert (
        main(["compare", str(tmp_path / "bigram"), str(tmp_path / "lstm"), "--out", str(out)]) == 0
    )
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:3] == ["run", "model", "parameters"]
    assert [line.split()[0] for line in table[1:]] == ["bigram", "lstm"]
    assert out.read_bytes().startswith(b"\x89PNG")
    assert main(["compare", str(tmp_path / "bigram"), "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["steps"] == 20 and row["tokens"] == 20 * 8 * 16
    assert row["parameters"] == 18 * 18  # bigram: I × I, I = 16 letters + space + newline
    assert row["bits_per_char"] == pytest.approx(row["val_loss"] / math.log(2))


def test_embedding_projection_keeps_the_main_directions():
    from lmforge.plotting import pca_2d

    rng = np.random.default_rng(0)
    points = rng.normal(size=(200, 2)) @ np.array([[5.0, 0, 0], [0, 2.0, 0]])
    points += rng.normal(scale=0.01, size=(200, 3))
    coords = pca_2d(points)
    assert coords.shape == (200, 2)
    assert np.var(coords[:, 0]) == pytest.approx(np.var(points[:, 0]), rel=0.05)
    assert np.var(coords[:, 1]) == pytest.approx(np.var(points[:, 1]), rel=0.05)


def test_resume_refuses_a_corpus_that_changed(corpus, tmp_path, capsys):
    args = train_args(corpus, tmp_path / "run", "--max-steps", "4", "--eval-interval", "2")
    assert main(args) == 0
    corpus.write_text(corpus.read_text() + "more text\n")
    assert main(["train", "--resume", str(tmp_path / "run"), "--max-steps", "8"]) == 2
    assert "the corpus changed since the run started" in capsys.readouterr().err
