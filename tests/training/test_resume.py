"""Exact resumption of max-steps runs whatever the log interval, gradient accumulation and
model; the settings a resume changes are remembered; what a time-budget run promises."""

import json

import pytest

from lmforge.config import resolve_config
from lmforge.training import train
from lmforge.training.checkpoint import load_trainer_state, read_metrics, save_trainer_state
from lmforge.training.run_dir import resume_config
from lmforge.training.schedule import learning_rate

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
    budget, trained = 6.0, 3.0
    run_dir = tmp_path / "run"
    cfg = config(tiny_corpus, run_dir, LSTM, max_steps=None, time_budget=budget, log_interval=1)
    # stopped at step 0 (a later step might not come in time on a loaded machine)
    monkeypatch.setenv("LMFORGE_TEST_FAULT", "interrupt:record@0")
    assert train(cfg, progress=False).interrupted
    monkeypatch.delenv("LMFORGE_TEST_FAULT")
    # as if the run had trained for 3 s before it stopped: the resumed run continues that clock
    state = load_trainer_state(run_dir / "trainer_state.pt")
    save_trainer_state(run_dir / "trainer_state.pt", {**state, "elapsed_s": trained})
    result = train(resume_config(run_dir), resume=True, progress=False)
    assert trained <= result.elapsed_s <= budget
    metrics = read_metrics(run_dir / "metrics.jsonl")
    assert [r["step"] for r in metrics] == list(range(result.steps + 1))  # each step once
    resumed = metrics[1:]
    assert all(trained <= r["elapsed_s"] <= budget for r in resumed)
    # the learning rate is the schedule's at that point of the budget, not the warm start's
    after_warmup = [r for r in resumed if r["step"] > cfg.train.warmup_steps]
    assert all(r["lr"] <= learning_rate(cfg.train, r["step"], trained) for r in after_warmup)
    lrs = [r["lr"] for r in after_warmup]
    assert lrs == sorted(lrs, reverse=True)


def test_only_cudnn_dropout_between_recurrent_layers_is_flagged_as_unsaveable(monkeypatch):
    import torch

    from lmforge.models import build_model
    from lmforge.training.loop import cudnn_dropout

    gpu, cpu = torch.device("cuda", 0), torch.device("cpu")
    lstm = build_model("lstm", vocab_size=9, n_embd=4, n_hidden=4, n_layer=2, dropout=0.1)
    assert cudnn_dropout(lstm, gpu) and not cudnn_dropout(lstm, cpu)
    for quiet in (
        build_model("gru", vocab_size=9, n_embd=4, n_hidden=4, n_layer=1, dropout=0.1),
        build_model("rnn", vocab_size=9, n_embd=4, n_hidden=4, n_layer=2, dropout=0.0),
        build_model("transformer", vocab_size=9, n_layer=2, n_head=2, n_embd=8, dropout=0.1),
    ):
        assert not cudnn_dropout(quiet, gpu)
    monkeypatch.setattr(torch.backends.cudnn, "enabled", False)  # torch's own dropout then
    assert not cudnn_dropout(lstm, gpu)
