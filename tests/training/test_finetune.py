"""``lmforge train --init-from``: a run that starts from another's weights and tokenizer."""

import json
import math
import shutil
import sys
import types

import pytest
import torch
from safetensors.torch import load_file

from lmforge.cli import main
from lmforge.config import resolve_config
from lmforge.evaluation import evaluate_run
from lmforge.runs import load_run
from lmforge.training import train
from lmforge.training.checkpoint import read_metrics
from lmforge.training.run_dir import resume_config
from tests.conftest import markov_text
from tests.training.test_resume import interrupted_then_resumed, records

TINY = ["--model", "transformer", "--n-layer", "1", "--n-head", "2", "--n-embd", "16"]
TINY += ["--position", "learned", "--block-size", "16", "--batch-size", "8"]
QUIET = ["--eval-iters", "2", "--device", "cpu", "--quiet"]


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    """Two texts over the same characters from different Markov chains."""
    folder = tmp_path_factory.mktemp("corpora")
    first, second = folder / "first.txt", folder / "second.txt"
    first.write_text(markov_text(6000, seed=0), encoding="utf-8")
    second.write_text(markov_text(6000, seed=11), encoding="utf-8")
    return first, second


@pytest.fixture(scope="module")
def source(corpora, tmp_path_factory):
    """A small Transformer trained on the first corpus (once: the tests only read it)."""
    out = tmp_path_factory.mktemp("source") / "run"
    args = ["train", "--corpus", str(corpora[0]), "--out", str(out), *TINY, *QUIET]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LMFORGE_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        assert main([*args, "--max-steps", "30", "--eval-interval", "30"]) == 0
    return out


def fine_tune(source, corpus, out, *flags):
    args = ["train", "--init-from", str(source), "--corpus", str(corpus), "--out", str(out)]
    return main([*args, "--block-size", "16", "--batch-size", "8", *QUIET, *flags])


def test_a_fine_tune_starts_from_the_source_and_lowers_its_loss_on_the_new_corpus(
    source, corpora, tmp_path
):
    start = tmp_path / "start"
    assert fine_tune(source, corpora[1], start, "--max-steps", "0") == 0
    # nothing learned, nothing new: the source's weights, model and tokenizer
    assert (start / "tokenizer.json").read_bytes() == (source / "tokenizer.json").read_bytes()
    saved = json.loads((start / "config.json").read_text())
    assert saved["model"] == json.loads((source / "config.json").read_text())["model"]
    assert saved["run"]["train"]["init_from"] == str(source)
    before, after = load_file(source / "best.safetensors"), load_file(start / "model.safetensors")
    assert before.keys() == after.keys()
    assert all(torch.equal(before[name], after[name]) for name in before)
    # repeated from its config.json: the same source, model and tokenizer
    again = tmp_path / "again"
    assert (
        main(["train", "--config", str(start / "config.json"), "--out", str(again), "--quiet"]) == 0
    )
    assert load_file(again / "model.safetensors").keys() == before.keys()
    assert (again / "tokenizer.json").read_bytes() == (source / "tokenizer.json").read_bytes()

    tuned = tmp_path / "tuned"
    flags = ["--max-steps", "30", "--learning-rate", "3e-3", "--warmup-steps", "0"]
    assert fine_tune(source, corpora[1], tuned, *flags, "--lr-schedule", "constant") == 0
    assert {r["lr"] for r in read_metrics(tuned / "metrics.jsonl")} == {3e-3}
    on_new = evaluate_run(load_run(source), corpus=str(corpora[1]), progress=False)
    assert evaluate_run(load_run(tuned), progress=False).loss < on_new.loss - 0.01


def test_freezing_the_embeddings_leaves_them_exactly_as_they_were(source, corpora, tmp_path):
    tuned = tmp_path / "tuned"
    flags = ["--max-steps", "5", "--learning-rate", "1e-2", "--warmup-steps", "0"]
    assert fine_tune(source, corpora[1], tuned, *flags, "--freeze", "embeddings") == 0
    before, after = load_file(source / "best.safetensors"), load_file(tuned / "model.safetensors")
    tables = {"lm_head.weight", "transformer.wpe.weight"}  # the tied token table, positions
    assert tables <= before.keys()
    for name in before:
        same = torch.equal(before[name], after[name])
        assert same == (name in tables), name


def test_a_resumed_fine_tune_logs_exactly_what_an_uninterrupted_one_logs(
    source, corpora, tmp_path, monkeypatch
):
    def config(out):
        options = {"max_steps": 8, "batch_size": 4, "block_size": 8, "eval_interval": 4}
        options |= {"eval_iters": 1, "log_interval": 2, "device": "cpu", "warmup_steps": 2}
        options |= {"init_from": str(source), "freeze": ["embeddings"]}
        return resolve_config(
            {
                "out": str(out),
                "data": {"corpus": str(corpora[1])},
                "model": {"dropout": 0.1},
                "train": options,
            }
        )

    train(config(tmp_path / "whole"), progress=False)
    interrupted_then_resumed(config(tmp_path / "cut"), "interrupt:step@5", monkeypatch)
    assert records(tmp_path / "cut") == records(tmp_path / "whole")
    assert len(records(tmp_path / "whole")) == 5  # steps 0, 2, 4, 6, 8
    resumed = resume_config(tmp_path / "cut")
    assert (resumed.train.init_from, resumed.train.freeze) == (str(source), ["embeddings"])
    assert resumed.model["dropout"] == 0.1  # the one model setting a fine-tune may change


CONTRADICTIONS = [
    (["--n-layer", "2"], "--n-layer 2 contradicts the model of --init-from"),
    (["--model", "lstm"], "--model lstm contradicts the model of --init-from"),
    (["--position", "rotary"], "--position rotary contradicts the model of --init-from"),
    (["--preset", "small"], "--preset (n_layer 6) contradicts the model of --init-from"),
    (["--tokenizer", "bpe"], "--tokenizer does not apply with --init-from"),
    (["--tokenizer-file", "t.json"], "--tokenizer-file does not apply with --init-from"),
    (["--block-size", "32"], "the training window --block-size 32 is longer than the model's"),
]


def test_settings_that_contradict_the_source_are_one_line_errors(source, corpora, tmp_path, capsys):
    capsys.readouterr()
    for flags, message in CONTRADICTIONS:
        args = ["train", "--init-from", str(source), "--corpus", str(corpora[1])]
        assert main([*args, "--out", str(tmp_path / "x"), *flags]) == 2, flags
        error = capsys.readouterr().err.strip()
        assert error.startswith(f"lmforge: error: {message}") and "\n" not in error, error
    assert main(["train", "--init-from", str(corpora[0]), "--out", str(tmp_path / "x")]) == 2
    assert "neither an lmforge run nor a Hugging Face model folder" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_a_hugging_face_folder_is_imported_once_then_fine_tuned(
    source, corpora, tmp_path, monkeypatch, capsys
):
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    imports = []

    def import_hf(directory, out):  # stands in for lmforge.importing's
        imports.append(directory)
        shutil.copytree(source, out)
        return out

    module = types.ModuleType("lmforge.importing")
    module.import_hf = import_hf
    monkeypatch.setitem(sys.modules, "lmforge.importing", module)
    for out in ("first", "second"):
        assert fine_tune(folder, corpora[1], tmp_path / out, "--max-steps", "0") == 0
        weights = load_file(tmp_path / out / "model.safetensors")
        assert torch.equal(
            weights["lm_head.weight"], load_file(source / "best.safetensors")["lm_head.weight"]
        )
    assert imports == [folder]  # the second fine-tune reused the imported run
    monkeypatch.setitem(sys.modules, "lmforge.importing", None)  # an lmforge without it
    (folder / "model.safetensors").write_bytes(b"changed")  # a new key: would import again
    assert fine_tune(folder, corpora[1], tmp_path / "third", "--max-steps", "0") == 2
    assert "convert it with `lmforge import` first" in capsys.readouterr().err


@pytest.mark.parametrize("model_type", ["gpt2", "llama"])
def test_a_random_hugging_face_model_fine_tunes_and_reports_bits_per_byte(model_type, tmp_path):
    from lmforge.importing import import_hf
    from tests.hf_fixtures import TRAINING_TEXT, hf_model_folder

    folder = hf_model_folder(tmp_path / model_type, model_type)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TRAINING_TEXT, encoding="utf-8")
    imported = import_hf(folder, tmp_path / "imported")
    tuned = tmp_path / "tuned"
    flags = ["--max-steps", "12", "--learning-rate", "3e-3", "--warmup-steps", "0"]
    assert fine_tune(folder, corpus, tuned, *flags, "--lr-schedule", "constant") == 0
    metrics = read_metrics(tuned / "metrics.jsonl")
    assert metrics[-1]["val_loss"] < metrics[0]["val_loss"] - 0.1
    assert load_run(tuned).tokenizer == load_run(imported).tokenizer  # the model's own
    before = evaluate_run(load_run(imported, checkpoint="final"), corpus=str(corpus))
    after = evaluate_run(load_run(tuned, checkpoint="final"), progress=False)
    assert after.loss < before.loss
    text = corpus.read_text(encoding="utf-8")
    val_bytes = len(text[len(text) - after.chars :].encode("utf-8"))
    expected = after.loss * after.tokens / math.log(2) / val_bytes
    assert after.bits_per_byte == pytest.approx(expected, rel=1e-9)
