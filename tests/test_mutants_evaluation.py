"""``evaluate_run`` on each split of a small trained run (gaps found by mutation testing)."""

import numpy as np
import pytest
import torch

from lmforge.cli import main
from lmforge.data.corpora import resolve_corpus
from lmforge.data.stream import encode_corpus
from lmforge.evaluation import evaluate_run, evaluate_tokens
from lmforge.runs import load_run
from tests.conftest import markov_text

BLOCK, BATCH, VAL_FRACTION = 16, 4, 0.25


@pytest.fixture
def run(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(markov_text(3000, seed=3), encoding="utf-8")
    out = tmp_path / "run"
    args = ["train", "--corpus", corpus, "--out", out, "--model", "bigram", "--max-steps", 5]
    args += ["--batch-size", BATCH, "--block-size", BLOCK, "--eval-iters", 1]
    args += ["--val-fraction", VAL_FRACTION, "--device", "cpu", "--quiet"]
    assert main([str(a) for a in args]) == 0
    return load_run(out), corpus


def test_split_all_scores_every_prediction_of_the_whole_text(run):
    run, corpus = run
    text = corpus.read_text(encoding="utf-8")
    result = evaluate_run(run, split="all", progress=False)
    tokens = run.tokenizer.encode_array(text)
    loss, count = evaluate_tokens(run.model, tokens, BLOCK, BATCH, torch.device("cpu"))
    assert (result.tokens, result.chars, result.stream_tokens) == (len(text) - 1, *[len(text)] * 2)
    assert result.loss == pytest.approx(loss, rel=1e-6)
    assert count == len(text) - 1


def test_the_default_split_is_val_with_the_run_s_val_fraction(run):
    run, corpus = run
    result = evaluate_run(run, progress=False)
    assert result == evaluate_run(run, split="val", progress=False)
    stream = encode_corpus(resolve_corpus(str(corpus)), run.tokenizer, val_fraction=VAL_FRACTION)
    default = encode_corpus(resolve_corpus(str(corpus)), run.tokenizer)
    assert stream.num_chars("val") != default.num_chars("val")  # the fraction matters
    assert result.chars == stream.num_chars("val")
    val = np.asarray(stream.tokens("val"))
    assert (result.tokens, result.stream_tokens) == (len(val) - 1, len(val))
    loss, _ = evaluate_tokens(run.model, val, BLOCK, BATCH, torch.device("cpu"))
    assert result.loss == pytest.approx(loss, rel=1e-6)
    train = evaluate_run(run, split="train", progress=False)
    assert train.chars + result.chars == len(corpus.read_text(encoding="utf-8"))
