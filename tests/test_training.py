import json
import math

import pytest
import torch

from lmforge.cli import main
from lmforge.config import resolve_config
from lmforge.errors import ConfigError, RunError, TrainingError
from lmforge.runs import load_run
from lmforge.training import train
from lmforge.training.checkpoint import read_metrics

SMALL_LSTM = {"family": "lstm", "n_embd": 16, "n_hidden": 32, "n_layer": 1, "dropout": 0.1}


def small_config(corpus, out, **train_options):
    options = {
        "max_steps": 30,
        "batch_size": 8,
        "block_size": 16,
        "eval_interval": 10,
        "eval_iters": 2,
        "log_interval": 5,
        "device": "cpu",
        **train_options,
    }
    return resolve_config(
        {
            "out": str(out),
            "data": {"corpus": str(corpus)},
            "model": dict(SMALL_LSTM),
            "train": options,
        }
    )


def test_run_directory_metrics_and_checkpoints(tiny_corpus, tmp_path):
    result = train(small_config(tiny_corpus, tmp_path / "run"), progress=False)
    run_dir = tmp_path / "run"
    names = {p.name for p in run_dir.iterdir()}
    assert {
        "config.json",
        "tokenizer.json",
        "model.safetensors",
        "best.safetensors",
        "trainer_state.pt",
        "metrics.jsonl",
    } <= names
    records = read_metrics(run_dir / "metrics.jsonl")
    assert [r["step"] for r in records] == [0, 5, 10, 15, 20, 25, 30]
    for record in records:
        assert {"step", "train_loss", "tokens", "tokens_per_s", "lr", "elapsed_s"} <= set(record)
    assert [r["step"] for r in records if "val_loss" in r] == [0, 10, 20, 30]
    assert records[-1]["tokens"] == 30 * 8 * 16
    assert records[0]["train_loss"] == pytest.approx(math.log(9), abs=0.05)
    assert result.steps == 30 and result.val_loss == records[-1]["val_loss"]
    assert result.best_val_loss == min(r["val_loss"] for r in records[1:] if "val_loss" in r)
    config = json.loads((run_dir / "config.json").read_text())
    assert config["model"]["family"] == "lstm" and config["vocab_size"] == 9


def test_checkpoint_roundtrip_gives_identical_model(tiny_corpus, tmp_path):
    train(small_config(tiny_corpus, tmp_path / "run"), progress=False)
    state = torch.load(tmp_path / "run" / "trainer_state.pt", weights_only=True)
    run = load_run(tmp_path / "run", checkpoint="final", device="cpu")
    for name, tensor in run.model.state_dict().items():
        assert torch.equal(tensor, state["model"][name]), name


def test_same_seed_same_run(tiny_corpus, tmp_path):
    train(small_config(tiny_corpus, tmp_path / "a"), progress=False)
    train(small_config(tiny_corpus, tmp_path / "b"), progress=False)
    train(small_config(tiny_corpus, tmp_path / "c", seed=7), progress=False)
    losses = {
        k: [r["train_loss"] for r in read_metrics(tmp_path / k / "metrics.jsonl")] for k in "abc"
    }
    assert losses["a"] == losses["b"]
    assert losses["a"] != losses["c"]


def test_existing_run_is_not_overwritten_by_accident(tiny_corpus, tmp_path, capsys):
    train(small_config(tiny_corpus, tmp_path / "run", max_steps=10), progress=False)
    before = (tmp_path / "run" / "model.safetensors").read_bytes()
    code = main(
        ["train", "--corpus", str(tiny_corpus), "--out", str(tmp_path / "run"), "--max-steps", "5"]
    )
    assert code == 2
    assert "already holds a run" in capsys.readouterr().err
    assert (tmp_path / "run" / "model.safetensors").read_bytes() == before


def test_time_budget_ends_the_run_inside_the_budget(tiny_corpus, tmp_path):
    config = small_config(
        tiny_corpus,
        tmp_path / "run",
        max_steps=None,
        time_budget=5.0,
        eval_interval=50,
        warmup_steps=2,
    )
    assert config.train.max_steps is None
    result = train(config, progress=False)
    assert result.steps >= 10
    assert result.elapsed_s <= 5.0
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert "val_loss" in records[-1] and records[-1]["step"] == result.steps
    lrs = [r["lr"] for r in records[1:]]
    assert lrs[-1] < 0.3 * max(lrs)  # the cosine spanned the budget


def test_a_budget_smaller_than_the_first_evaluation_still_trains_one_step(tiny_corpus, tmp_path):
    # on a slow machine the step-0 evaluation can take longer than the whole budget
    config = small_config(tiny_corpus, tmp_path / "run", max_steps=None, time_budget=1e-6)
    result = train(config, progress=False)
    assert result.steps == 1
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in records] == [0, 1] and "val_loss" in records[-1]


@pytest.mark.parametrize("family", ["bigram", "context", "rnn", "gru", "lstm", "transformer"])
def test_every_model_trains_and_lowers_the_loss(family, tiny_corpus, tmp_path):
    model = (
        {"family": family}
        if family in ("bigram", "context")
        else {"family": family, "n_embd": 16, "n_head": 2, "n_layer": 1}
        if family == "transformer"
        else {"family": family, "n_embd": 16, "n_hidden": 32, "n_layer": 1}
    )
    rate = {} if family in ("bigram", "context") else {"learning_rate": 1e-2}
    config = resolve_config(
        {
            "out": str(tmp_path / family),
            "data": {"corpus": str(tiny_corpus)},
            "model": model,
            "train": {
                "max_steps": 60,
                "batch_size": 16,
                "block_size": 32,
                "warmup_steps": 5,
                "eval_interval": 60,
                "eval_iters": 4,
                "device": "cpu",
                **rate,
            },
        }
    )
    result = train(config, progress=False)
    first = read_metrics(tmp_path / family / "metrics.jsonl")[0]["val_loss"]
    assert result.val_loss < first - 0.05


def test_sgd_optimizer_and_bad_options(tiny_corpus, tmp_path):
    result = train(
        small_config(tiny_corpus, tmp_path / "sgd", optimizer="sgd", learning_rate=0.5),
        progress=False,
    )
    assert math.isfinite(result.val_loss)
    with pytest.raises(ConfigError, match="--batch-size must be at least 1"):
        small_config(tiny_corpus, tmp_path / "x", batch_size=0)
    with pytest.raises(RunError, match="run directory not found"):
        from lmforge.training.trainer import resume_config

        resume_config(tmp_path / "nothing")


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_checkpoint(
    tiny_corpus, tmp_path, monkeypatch, capsys
):
    from lmforge.training import loop as trainer_module

    config = small_config(tiny_corpus, tmp_path / "run", max_steps=40)
    real_loss = trainer_module.batch_loss
    calls = {"n": 0}

    def poisoned(model, x, y, reduction="mean"):
        calls["n"] += 1
        loss = real_loss(model, x, y, reduction)
        return loss * float("nan") if calls["n"] > 25 and model.training else loss

    monkeypatch.setattr(trainer_module, "batch_loss", poisoned)
    with pytest.raises(
        TrainingError,
        match=r"loss became nan by step 30; the last good checkpoint \(step 20\) is kept",
    ):
        train(config, progress=False)
    run = load_run(tmp_path / "run", checkpoint="final", device="cpu")
    assert all(torch.isfinite(p).all() for p in run.model.parameters())
    state = torch.load(tmp_path / "run" / "trainer_state.pt", weights_only=True)
    assert state["step"] == 20


def test_auto_dtype_is_bfloat16_only_where_the_device_has_it_natively(monkeypatch):
    from lmforge.device import resolve_dtype

    cpu = torch.device("cpu")
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    assert resolve_dtype("auto", cpu) == torch.bfloat16
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert resolve_dtype("auto", cpu) == torch.float32
    assert resolve_dtype("float16", cpu) == torch.float16
    with pytest.raises(ConfigError, match="unknown dtype 'half'"):
        resolve_dtype("half", cpu)
