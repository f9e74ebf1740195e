"""Per-family presets: `--model lstm --preset wt2` (the word-level WikiText-2 LSTM) next to
the Transformer presets, with one-line errors for a preset of another family."""

from __future__ import annotations

import pytest

from lmforge.cli import main
from lmforge.config import LSTM_PRESETS, preset_names, resolve_config
from lmforge.errors import ConfigError
from lmforge.models.base import build_model


def lstm_config(**model: object):
    return resolve_config({"out": "x", "model": {"family": "lstm", "preset": "wt2", **model}})


def test_the_wt2_preset_sets_the_shape_and_the_training() -> None:
    config = lstm_config()
    assert config.model == {
        "family": "lstm",
        "n_embd": 256,
        "n_hidden": 256,
        "n_layer": 2,
        "dropout": 0.1,
        "tie_weights": True,
    }
    train = config.train
    assert (train.batch_size, train.block_size, train.grad_clip) == (32, 35, 0.25)
    assert (train.optimizer, train.learning_rate, train.lr_schedule) == ("sgd", 20.0, "cosine")
    assert (train.warmup_steps, train.weight_decay) == (0, 0.0)


def test_size_flags_and_a_budget_override_the_preset() -> None:
    config = resolve_config(
        {
            "out": "x",
            "model": {"family": "lstm", "preset": "wt2", "n_embd": 300, "n_hidden": 300},
            "train": {"time_budget": 600.0},
        }
    )
    assert (config.model["n_embd"], config.model["n_hidden"]) == (300, 300)
    assert config.model["tie_weights"] is True and "preset" not in config.model
    assert (config.train.time_budget, config.train.max_steps) == (600.0, None)


def test_the_wt2_shape_ties_its_33278_word_matrices() -> None:
    model = build_model("lstm", vocab_size=33_278, **LSTM_PRESETS["wt2"]["model"])
    assert model.head.weight is model.embedding.weight
    # tied embedding 33,278 × 256 + output bias 33,278 + 2 LSTM layers of 4·256·(256+256+2)
    assert model.num_parameters() == 33_278 * 257 + 2 * 4 * 256 * (256 + 256 + 2)


@pytest.mark.parametrize(
    ("family", "preset", "message"),
    [
        (
            "lstm",
            "tiny",
            "--preset applies to --model transformer only; drop it for lstm, or "
            "choose lstm's preset wt2",
        ),
        ("bigram", "tiny", "--preset applies to --model transformer only; drop it for bigram"),
        ("gru", "wt2", "--preset applies to --model lstm only; drop it for gru"),
        (
            "transformer",
            "wt2",
            "--preset applies to --model lstm only; drop it for "
            "transformer, or choose transformer's preset tiny, small, gpt2, llama",
        ),
        ("lstm", "huge", "unknown preset 'huge'; choose one of wt2"),
        ("rnn", "huge", "--preset applies to --model transformer or lstm only; drop it for rnn"),
    ],
)
def test_a_preset_of_another_family_is_a_one_line_error(family, preset, message) -> None:
    with pytest.raises(ConfigError) as caught:
        resolve_config({"out": "x", "model": {"family": family, "preset": preset}})
    assert str(caught.value) == message


def test_the_flag_offers_every_familys_presets(capsys) -> None:
    assert preset_names() == ["tiny", "small", "gpt2", "llama", "wt2"]
    assert main(["train", "--model", "gru", "--preset", "wt2", "--out", "unused"]) == 2
    assert capsys.readouterr().err == (
        "lmforge: error: --preset applies to --model lstm only; drop it for gru\n"
    )


def test_a_fine_tune_of_a_wt2_run_may_name_its_preset(tmp_path, capsys) -> None:
    corpus = tmp_path / "words.txt"
    corpus.write_text("the cat sat on the mat .\nthe dog ran to the cat .\n" * 20)
    common = ["--corpus", str(corpus), "--max-steps", "1", "--eval-iters", "1", "--quiet"]
    common += ["--batch-size", "2", "--block-size", "8", "--device", "cpu"]
    source = tmp_path / "source"
    argv = ["train", "--tokenizer", "word", "--model", "lstm", "--preset", "wt2", *common]
    assert main([*argv, "--out", str(source)]) == 0
    tuned = ["train", "--init-from", str(source), "--preset", "wt2", *common]
    assert main([*tuned, "--out", str(tmp_path / "tuned")]) == 0, capsys.readouterr().err
    assert main([*tuned, "--n-hidden", "128", "--out", str(tmp_path / "x")]) == 2
    assert "--n-hidden 128 contradicts the model of --init-from" in capsys.readouterr().err
