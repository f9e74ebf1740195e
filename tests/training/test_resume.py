"""Exact resumption of max-steps runs whatever the log interval, gradient accumulation and
model; the settings a resume changes are remembered; what a time-budget run promises."""

import json

import pytest

from lmforge.config import resolve_config
from lmforge.training import train
from lmforge.training.checkpoint import load_trainer_state, read_metrics
from lmforge.training.run_dir import resume_config

LSTM = {"family": "lstm", "n_embd": 8, "n_hidden": 16, "n_layer": 1, "dropout": 0.1}
TRANSFORMER = {"family": "transformer", "n_embd": 16, "n_head": 2, "n_layer": 1, "dropout": 0.1}


def config(corpus, out, model, **train_options):
    return resolve_config(
        {
            "out": str(out),
            "data": {"corpus": str(corpus)},
            "model": dict(model),
            "train": {
                "max_steps": 16,
                "batch_size": 4,
                "block_size": 8,
                "eval_interval": 8,
                "eval_iters": 1,
                "learning_rate": 1e-2,
                "warmup_steps": 2,
                "device": "cpu",
                **train_options,
            },
        }
    )


def interrupted_then_resumed(cfg, fault, monkeypatch):
    """Train ``cfg`` with a Ctrl-C planted at ``fault``, then resume it to the end."""
    monkeypatch.setenv("LMFORGE_TEST_FAULT", fault)
    assert train(cfg, progress=False).interrupted
    monkeypatch.delenv("LMFORGE_TEST_FAULT")
    assert not train(resume_config(cfg.out), resume=True, progress=False).interrupted


def records(run_dir):
    return [
        (r["step"], r["train_loss"], r.get("val_loss"), r["tokens"], r["lr"])
        for r in read_metrics(run_dir / "metrics.jsonl")
    ]


@pytest.mark.parametrize(
    ("model", "options", "fault"),
    [
        (LSTM, {"log_interval": 3}, "interrupt:step@7"),  # 6 is logged, 7 is not
        # (more than 64 rows per evaluation batch: models/transformer.py's transposed head
        # copy for small CPU batches is not refreshed after a fused AdamW step)
        (
            TRANSFORMER,
            {"log_interval": 4, "grad_accum": 2, "batch_size": 8, "block_size": 16},
            "interrupt:step@6",
        ),
        (LSTM, {"log_interval": 1}, "interrupt:record@0"),  # stopped at step 0
    ],
    ids=["lstm-log3", "transformer-dropout-accum2-log4", "step0"],
)
def test_ctrl_c_and_resume_log_exactly_what_an_uninterrupted_run_logs(
    model, options, fault, tiny_corpus, tmp_path, monkeypatch
):
    train(config(tiny_corpus, tmp_path / "whole", model, **options), progress=False)
    cut = config(tiny_corpus, tmp_path / "cut", model, **options)
    interrupted_then_resumed(cut, fault, monkeypatch)
    whole = records(tmp_path / "whole")
    assert len({r[0] for r in whole}) == len(whole)  # no step twice
    assert records(tmp_path / "cut") == whole


def test_settings_changed_on_resume_are_remembered_by_the_next_resume(tiny_corpus, tmp_path):
    cfg = config(tiny_corpus, tmp_path / "run", LSTM, max_steps=4, eval_interval=2)
    train(cfg, progress=False)
    again = resume_config(tmp_path / "run", {"max_steps": 6, "log_interval": 2})
    assert train(again, resume=True, progress=False).steps == 6
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["run"]["out"] == str(tmp_path / "run")
    assert (saved["run"]["train"]["max_steps"], saved["run"]["train"]["log_interval"]) == (6, 2)
    third = resume_config(tmp_path / "run")  # no flags: the changed settings hold
    assert (third.train.max_steps, third.train.log_interval) == (6, 2)


def test_a_resumed_time_budget_run_continues_its_clock_and_schedule(
    tiny_corpus, tmp_path, monkeypatch
):
    budget = 6.0
    cfg = config(
        tiny_corpus, tmp_path / "run", LSTM, max_steps=None, time_budget=budget, log_interval=1
    )
    interrupted_then_resumed(cfg, "interrupt:step@3", monkeypatch)
    state = load_trainer_state(tmp_path / "run" / "trainer_state.pt")
    metrics = read_metrics(tmp_path / "run" / "metrics.jsonl")
    steps = [r["step"] for r in metrics]
    assert steps == sorted(set(steps)) and steps[:4] == [0, 1, 2, 3]
    # the clock is the training time saved in the state: it never restarts from zero
    elapsed = [r["elapsed_s"] for r in metrics]
    assert elapsed == sorted(elapsed) and elapsed[-1] <= budget
    assert state["elapsed_s"] <= budget and state["step"] == steps[-1]
    # the learning rate follows the one schedule: after warmup it only falls
    lrs = [r["lr"] for r in metrics if r["step"] > 2]
    assert lrs == sorted(lrs, reverse=True)
