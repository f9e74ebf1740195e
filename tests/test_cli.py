"""End to end through the command line, on the real Tiny Shakespeare."""

import json
import math
import subprocess
import sys

import pytest

from lmforge.cli import main


@pytest.mark.integration
def test_train_sample_eval_score_on_tinyshakespeare(tmp_path, capsys):
    run = tmp_path / "shakespeare"
    code = main(
        [
            "train",
            "--corpus",
            "tinyshakespeare",
            "--model",
            "lstm",
            "--out",
            str(run),
            "--n-embd",
            "32",
            "--n-hidden",
            "64",
            "--n-layer",
            "1",
            "--batch-size",
            "16",
            "--block-size",
            "32",
            "--max-steps",
            "40",
            "--eval-interval",
            "20",
            "--eval-iters",
            "2",
            "--learning-rate",
            "1e-2",
            "--warmup-steps",
            "5",
            "--device",
            "cpu",
            "--quiet",
        ]
    )
    assert code == 0
    hint = f"sample with: lmforge sample {run} --prompt 'ROMEO:'"
    assert capsys.readouterr().err.splitlines()[-1] == hint

    assert (
        main(
            [
                "sample",
                str(run),
                "--prompt",
                "ROMEO:",
                "--length",
                "80",
                "--seed",
                "3",
                "--num-samples",
                "2",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    samples = out.split("-" * 40 + "\n")
    assert len(samples) == 2 and all(s.startswith("ROMEO:") for s in samples)
    assert (
        main(
            [
                "sample",
                str(run),
                "--prompt",
                "ROMEO:",
                "--length",
                "80",
                "--seed",
                "3",
                "--num-samples",
                "2",
            ]
        )
        == 0
    )
    assert capsys.readouterr().out == out  # seeded sampling is reproducible

    assert main(["eval", str(run), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result) == {
        "loss",
        "perplexity",
        "bits_per_char",
        "bits_per_byte",
        "tokens",
        "windows",
    }
    assert result["bits_per_byte"] is None  # a character tokenizer: not byte-level
    assert result["windows"] == "non-overlapping windows of 32 tokens"
    assert result["tokens"] > 100_000  # the whole validation tenth, every prediction
    assert result["perplexity"] == pytest.approx(math.exp(result["loss"]))
    assert result["bits_per_char"] == pytest.approx(result["loss"] / math.log(2))
    assert result["loss"] < math.log(65)

    assert main(["eval", str(run)]) == 0
    assert "bits per char" in capsys.readouterr().out

    assert (
        main(
            [
                "score",
                str(run),
                "--prompt",
                "It is great to hear that",
                "--json",
                "you have succeeded",
                "potato is round",
                "potato am good",
            ]
        )
        == 0
    )
    scored = json.loads(capsys.readouterr().out)
    assert [s["logprob"] for s in scored] == sorted((s["logprob"] for s in scored), reverse=True)
    assert {s["continuation"] for s in scored} == {
        "you have succeeded",
        "potato is round",
        "potato am good",
    }


def test_the_sample_hint_proposes_a_shakespeare_prompt_only_after_shakespeare(tmp_path, capsys):
    corpus = tmp_path / "notes.txt"
    corpus.write_text("the cat sat on the mat. " * 200, encoding="utf-8")
    run = tmp_path / "notes"
    argv = ["train", "--corpus", str(corpus), "--model", "bigram", "--out", str(run)]
    assert main([*argv, "--max-steps", "2", "--device", "cpu", "--quiet"]) == 0
    assert capsys.readouterr().err.splitlines()[-1] == f"sample with: lmforge sample {run}"


def test_help_lists_the_commands():
    proc = subprocess.run(
        [sys.executable, "-m", "lmforge", "--help"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0
    for command in ("train", "sample", "eval", "score", "demo"):
        assert command in proc.stdout


def test_sample_from_a_missing_run_is_a_one_line_error(tmp_path, capsys):
    assert main(["sample", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lmforge: error: run directory not found") and err.count("\n") == 1


def test_demo_trains_and_prints_a_sample_offline(tmp_path, capsys, monkeypatch):
    """The README's first command works with no data directory and no network."""
    monkeypatch.setenv("LMFORGE_DATA_DIR", str(tmp_path / "empty-data-dir"))
    monkeypatch.setenv("LMFORGE_OFFLINE", "1")
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--seconds", "6", "--length", "50", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert printed.strip().startswith("ROMEO:")
    assert len(printed.strip()) >= len("ROMEO:") + 30
    assert (out / "model.safetensors").is_file()
