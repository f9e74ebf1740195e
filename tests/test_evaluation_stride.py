"""``lmforge eval --stride / --max-tokens`` and bits per byte: values the math fixes."""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lmforge.cli import main
from lmforge.errors import LmforgeError
from lmforge.evaluation import evaluate_run, evaluate_tokens, sliding_windows
from lmforge.models.base import build_model
from lmforge.runs import load_run
from tests.conftest import markov_text

CPU = torch.device("cpu")
BLOCK = 8


def randomized(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """``model`` with every weight drawn at random (zero-initialised heads predict nothing)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.5)
    return model.eval()


def transformer(vocab: int = 11) -> torch.nn.Module:
    model = build_model(
        "transformer", vocab_size=vocab, n_layer=1, n_head=2, n_embd=16, block_size=BLOCK
    )
    return randomized(model)


def token_stream(n: int, vocab: int = 11, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, vocab, size=n).astype(np.uint16)


@pytest.mark.parametrize(
    ("predictions", "block", "stride"),
    [(1, 4, 1), (4, 4, 2), (5, 4, 4), (7, 4, 2), (20, 4, 3), (20, 5, 1), (21, 5, 5)],
)
def test_sliding_windows_score_every_prediction_once_with_up_to_a_block_of_context(
    predictions, block, stride
):
    tokens = np.arange(predictions + 1)
    scored: list[int] = []
    for x, y, last in sliding_windows(tokens, block, stride, batch_size=2):
        assert x.shape == y.shape and x.shape[1] <= block
        assert (y == x + 1).all()
        for row_y in y:
            for position in range(len(row_y) - last, len(row_y)):
                target = int(row_y[position])
                context = position + 1  # tokens of the window up to the target's input
                # the most context the target can have: the whole block, or all text before it
                assert context >= min(target, block - stride + 1)
                scored.append(target)
    assert sorted(scored) == list(range(1, predictions + 1))


def test_stride_equal_to_the_block_size_is_the_default():
    model, tokens = transformer(), token_stream(75)
    default = evaluate_tokens(model, tokens, BLOCK, 3, CPU)
    strided = evaluate_tokens(model, tokens, BLOCK, 3, CPU, stride=BLOCK)
    assert strided[1] == default[1] == 74
    assert strided[0] == pytest.approx(default[0], rel=1e-6)


def test_stride_one_gives_every_prediction_its_full_context():
    model, tokens = transformer(), token_stream(40)
    ids = torch.from_numpy(tokens.astype(np.int64))
    nats = []
    with torch.no_grad():
        for target in range(1, len(ids)):  # token by token, with up to BLOCK tokens before
            context = ids[max(0, target - BLOCK) : target][None, :]
            logits, _ = model(context)
            nats.append(-F.log_softmax(logits[0, -1], dim=-1)[ids[target]].item())
    expected = sum(nats) / len(nats)
    loss, count = evaluate_tokens(model, tokens, BLOCK, 4, CPU, stride=1)
    assert count == len(nats) == 39
    assert loss == pytest.approx(expected, rel=1e-5)
    # more context helps a model that uses it: stride 1 differs from the default here
    assert loss != pytest.approx(evaluate_tokens(model, tokens, BLOCK, 4, CPU)[0], rel=1e-3)


def test_a_recurrent_model_carries_its_state_through_the_text_whatever_the_stride():
    model = randomized(build_model("lstm", vocab_size=11, n_embd=8, n_hidden=16, n_layer=1))
    tokens = token_stream(50)
    ids = torch.from_numpy(tokens.astype(np.int64))
    with torch.no_grad():  # one pass over the whole text: every prediction sees all before it
        logits, _ = model(ids[None, :-1])
        expected = F.cross_entropy(logits[0], ids[1:]).item()
    results = {s: evaluate_tokens(model, tokens, BLOCK, 4, CPU, stride=s) for s in (1, 3, BLOCK)}
    for loss, count in results.values():
        assert count == 49
        assert loss == pytest.approx(expected, rel=1e-5)
    # the default windows start from an empty state, so they score differently
    assert evaluate_tokens(model, tokens, BLOCK, 4, CPU)[0] != pytest.approx(expected, rel=1e-3)


@pytest.fixture
def bpe_run(tmp_path):
    """A 2-step byte-level BPE Transformer run on text with multi-byte characters."""
    corpus = tmp_path / "corpus.txt"
    text = markov_text(1500, seed=5, alphabet="abcé€ 🙂\n")
    corpus.write_text(text, encoding="utf-8")
    out = tmp_path / "run"
    args = ["train", "--corpus", corpus, "--out", out, "--model", "transformer"]
    args += ["--tokenizer", "bpe", "--vocab-size", 300, "--n-layer", 1, "--n-head", 2]
    args += ["--n-embd", 16, "--block-size", BLOCK, "--batch-size", 4, "--max-steps", 2]
    args += ["--eval-iters", 1, "--device", "cpu", "--quiet"]
    assert main([str(a) for a in args]) == 0
    return out, text


def test_bits_per_byte_are_the_total_nats_per_utf8_byte_of_the_text(bpe_run):
    out, text = bpe_run
    run = load_run(out)
    result = evaluate_run(run, split="all", progress=False)
    tokens = run.tokenizer.encode_array(text)
    loss, count = evaluate_tokens(run.model, tokens, BLOCK, 4, CPU)
    utf8_bytes = len(text.encode("utf-8"))
    assert utf8_bytes > len(text) + 500  # many multi-byte characters
    assert result.bits_per_byte == pytest.approx(loss * count / math.log(2) / utf8_bytes, 1e-6)
    # the same on a split read from the token cache (the held-out tenth)
    val = evaluate_run(run, split="val", progress=False)
    val_text = text[len(text) - val.chars :]
    expected = val.loss * val.tokens / math.log(2) / len(val_text.encode("utf-8"))
    assert val.bits_per_byte == pytest.approx(expected, rel=1e-12)


def test_max_tokens_scores_a_prefix_and_counts_its_bytes(bpe_run, capsys):
    out, text = bpe_run
    run = load_run(out)
    result = evaluate_run(run, split="all", max_tokens=101, progress=False, stride=4)
    prefix = run.tokenizer.encode_array(text)[:101]
    loss, count = evaluate_tokens(run.model, prefix, BLOCK, 4, CPU, stride=4)
    prefix_bytes = run.tokenizer.decode_bytes(prefix.tolist())
    assert (result.tokens, result.stream_tokens) == (count, 101) == (100, 101)
    assert result.loss == pytest.approx(loss, rel=1e-6)
    assert text.encode("utf-8").startswith(prefix_bytes)
    expected = loss * count / math.log(2) / len(prefix_bytes)
    assert result.bits_per_byte == pytest.approx(expected, rel=1e-6)
    assert result.windows == f"sliding windows of {BLOCK} tokens, stride 4"

    assert (
        main(["eval", str(out), "--split", "all", "--stride", "4", "--max-tokens", "101", "--json"])
        == 0
    )
    shown = json.loads(capsys.readouterr().out)
    assert shown["tokens"] == 100 and shown["windows"] == result.windows
    assert main(["eval", str(out), "--max-tokens", "101"]) == 0
    printed = capsys.readouterr().out
    assert f"windows:         non-overlapping windows of {BLOCK} tokens" in printed
    assert "bits per byte:" in printed


IMPOSSIBLE_FLAGS = [
    (["--stride", "0"], "--stride must be between 1 and the block size 8, got 0"),
    (["--stride", "9"], "--stride must be between 1 and the block size 8, got 9"),
    (["--max-tokens", "1"], "--max-tokens must be at least 2"),
    (["--block-size", "9"], "--block-size must be between 1 and the model's context 8"),
]


def test_impossible_eval_flags_are_one_line_errors(bpe_run, capsys):
    out, _ = bpe_run
    for flags, message in IMPOSSIBLE_FLAGS:
        assert main(["eval", str(out), *flags]) == 2
        error = capsys.readouterr().err.strip()
        assert error.startswith(f"lmforge: error: {message}") and "\n" not in error
    with pytest.raises(LmforgeError, match="--stride must be between 1"):
        evaluate_tokens(transformer(), token_stream(20), BLOCK, 2, CPU, stride=0)


@pytest.mark.parametrize(
    ("family", "options", "expected"),
    [
        ("bigram", {}, "each prediction from the one token before it (--stride has no effect)"),
        (
            "context",
            {"block_size": 16},
            "carried state: each prediction averages its last 16 tokens (--stride has no effect)",
        ),
        ("lstm", {}, "carried state through the whole text (--stride has no effect)"),
        (
            "transformer",
            {"n_layer": 1, "n_head": 2, "n_embd": 16, "block_size": BLOCK},
            f"sliding windows of {BLOCK} tokens, stride 4",
        ),
    ],
)
def test_the_windows_line_says_what_each_family_sees(family, options, expected) -> None:
    from lmforge.evaluation import describe_windows

    model = build_model(family, vocab_size=11, **options)
    assert describe_windows(model, BLOCK, 4) == expected
