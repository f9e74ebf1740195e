"""The neural bigram, trained by maximum likelihood, reaches the count model's cross-entropy."""

import math
from collections import Counter

import numpy as np
import torch

from lmforge.config import resolve_config
from lmforge.evaluation import evaluate_tokens
from lmforge.runs import load_run
from lmforge.training import train
from lmforge.training.trainer import prepare_data


def count_cross_entropy(tokens: np.ndarray) -> float:
    """-1/N Σ log p(b|a) with p(b|a) = count(a, b) / count(a·): the maximum-likelihood bigram."""
    pairs = Counter(zip(tokens[:-1].tolist(), tokens[1:].tolist(), strict=True))
    firsts = Counter(tokens[:-1].tolist())
    total = sum(c * math.log(c / firsts[a]) for (a, _), c in pairs.items())
    return -total / (len(tokens) - 1)


def test_neural_bigram_reaches_count_based_cross_entropy(tiny_corpus, tmp_path):
    config = resolve_config(
        {
            "out": str(tmp_path / "run"),
            "data": {"corpus": str(tiny_corpus)},
            "model": {"family": "bigram"},
            "train": {
                "max_steps": 600,
                "batch_size": 64,
                "block_size": 32,
                "eval_interval": 300,
                "device": "cpu",
            },
        }
    )
    train(config, progress=False)
    run = load_run(tmp_path / "run", checkpoint="final")
    _, stream = prepare_data(config, progress=False)
    tokens = np.asarray(stream.tokens("train"))
    closed_form = count_cross_entropy(tokens)
    neural, count = evaluate_tokens(run.model, tokens, 32, 64, torch.device("cpu"))
    assert count == len(tokens) - 1
    assert neural >= closed_form - 1e-6  # the count model is the maximum of the likelihood
    assert neural - closed_form < 0.01
