"""The Transformer from the command line: presets, training defaults, sample and score."""

import json
import math

import pytest

from lmforge.cli import main
from lmforge.config import TRANSFORMER_PRESETS, auto_transformer_preset, resolve_config
from lmforge.errors import ConfigError


def transformer_config(tmp_path, model=None, train=None, config_file=None):
    return resolve_config(
        {
            "out": str(tmp_path / "run"),
            "model": {"family": "transformer", **(model or {})},
            "train": {"device": "cpu", **(train or {})},
        },
        config_file,
    )


def test_the_preset_follows_the_device_and_the_corpus_size():
    asked = []

    def size():
        asked.append(True)
        return 10**9

    assert auto_transformer_preset("cpu", size) == "tiny" and not asked
    assert auto_transformer_preset("cuda", lambda: 1_000_000) == "small"
    assert auto_transformer_preset("cuda", size) == "gpt2"
    assert auto_transformer_preset("mps", lambda: 50_000_000) == "small"


def test_on_a_cpu_the_default_is_the_tiny_preset(tmp_path):
    config = transformer_config(tmp_path)
    tiny = TRANSFORMER_PRESETS["tiny"]
    assert config.model == {"family": "transformer", **tiny["model"], "block_size": 128}
    assert config.train.block_size == tiny["train"]["block_size"] == 128
    assert config.train.learning_rate == tiny["train"]["learning_rate"]
    assert config.train.dtype == "auto"  # bfloat16 where the CPU has it natively


def test_a_named_preset_and_size_flags_override_the_default(tmp_path):
    config = transformer_config(
        tmp_path, {"preset": "small", "n_layer": 3}, {"block_size": 100, "dtype": "float32"}
    )
    assert config.model["n_layer"] == 3 and config.model["n_embd"] == 384
    assert config.model["dropout"] == 0.2 and "preset" not in config.model
    assert config.model["block_size"] == config.train.block_size == 100
    assert config.train.batch_size == 64 and config.train.learning_rate == 1e-3
    assert config.train.dtype == "float32"


def test_impossible_preset_settings_are_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown preset 'huge'; choose one of tiny, small"):
        transformer_config(tmp_path, {"preset": "huge"})
    with pytest.raises(ConfigError, match="--preset applies to --model transformer only"):
        resolve_config({"out": "x", "model": {"family": "lstm", "preset": "tiny"}})
    toml = tmp_path / "run.toml"
    toml.write_text('[model]\nfamily = "transformer"\nblock_size = 64\n[train]\nblock_size = 65\n')
    with pytest.raises(ConfigError, match="window --block-size 65 is longer than the model's"):
        resolve_config({"out": "x", "train": {"device": "cpu"}}, toml)


def test_train_sample_and_score_a_transformer(tmp_path, verse_corpus, capsys):
    run = tmp_path / "run"
    flags = ["--n-layer", "2", "--n-head", "2", "--n-embd", "32", "--block-size", "32"]
    steps = ["--max-steps", "60", "--eval-interval", "30", "--eval-iters", "2"]
    train = ["train", "--corpus", str(verse_corpus), "--model", "transformer", "--out", str(run)]
    assert main([*train, *flags, *steps, "--batch-size", "8", "--device", "cpu", "--quiet"]) == 0
    saved = json.loads((run / "config.json").read_text())
    assert saved["model"]["position"] == "rotary" and saved["model"]["block_size"] == 32
    capsys.readouterr()

    sample = ["sample", str(run), "--prompt", "to be", "--length", "120", "--seed", "1"]
    assert main([*sample, "--temperature", "0.8", "--top-k", "5", "--top-p", "0.9"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("to be") and len(text) > 100
    assert main([*sample, "--stop", "\n", "--repetition-penalty", "1.2"]) == 0
    stopped = capsys.readouterr().out
    assert stopped.startswith("to be") and stopped.count("\n") == 1  # print's own newline
    assert main([*sample, "--stop", "\n", "--repetition-penalty", "1.2", "--stream"]) == 0
    assert capsys.readouterr().out == stopped

    prompt = "it is great to hear that"
    endings = ["you have succeeded", "gold is round", "that is ugly"]
    assert main(["score", str(run), "--prompt", prompt, *endings, "--json"]) == 0
    scored = json.loads(capsys.readouterr().out)
    assert [s["logprob"] for s in scored] == sorted((s["logprob"] for s in scored), reverse=True)
    assert {s["continuation"] for s in scored} == set(endings)
    for s in scored:
        assert s["prob"] == pytest.approx(math.exp(s["logprob"]))
        assert s["logprob"] == pytest.approx(math.fsum(t["logprob"] for t in s["tokens"]))
    assert main(["score", str(run), "--prompt", prompt, *endings, "--per-token"]) == 0
    assert "per token" in capsys.readouterr().out
