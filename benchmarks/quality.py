"""Quality bars on Tiny Shakespeare, characters, last 10 % held out: train each model of the
ladder with `lmforge train` (its defaults plus the flags shown), score the whole validation
split with `lmforge eval`, and compare with the closed-form count models.

    python benchmarks/quality.py                                  # bigram and context models
    python benchmarks/quality.py --models lstm transformer        # the 600-second runs
    python benchmarks/quality.py --models transformer-nanogpt     # nanoGPT's CPU run, as a peer
    python benchmarks/quality.py --models all

Each row prints the exact command it ran. Runs go to runs/bench-<name> (replaced).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
from bench_runs import LMFORGE, run

COMMON = ["--corpus", "tinyshakespeare", "--tokenizer", "char", "--device", "cpu"]

# name -> (extra train flags, bar on the validation loss, what the bar is)
MODELS: dict[str, tuple[list[str], float, str]] = {
    "bigram": (["--model", "bigram"], 2.49, "≤ 2.49 (count model: val 2.48)"),
    "context-sum": (["--model", "context", "--context-mode", "sum"], 3.35, "< unigram 3.35"),
    "context-mean": (["--model", "context", "--context-mode", "mean"], 3.35, "< unigram 3.35"),
    "lstm": (["--model", "lstm", "--time-budget", "600"], 1.55, "≤ 1.55 in 600 s"),
    "transformer": (["--model", "transformer", "--time-budget", "600"], 1.55, "≤ 1.55 in 600 s"),
    # the peer: nanoGPT's README CPU run (4 layers, 4 heads, 128 wide, block 64, batch 12, 2000
    # iterations, no biases, learned positions, float32), val 1.886 after 2000 iterations
    "transformer-nanogpt": (
        [
            *("--model", "transformer", "--position", "learned", "--dtype", "float32"),
            *("--n-layer", "4", "--n-head", "4", "--n-embd", "128", "--dropout", "0.0"),
            *("--block-size", "64", "--batch-size", "12", "--max-steps", "2000"),
            *("--learning-rate", "1e-3", "--min-lr", "1e-4", "--warmup-steps", "100"),
            *("--eval-interval", "250", "--eval-iters", "20"),
        ],
        1.90,
        "≤ 1.90 (nanoGPT: 1.886)",
    ),
}


def count_model_losses(train: np.ndarray, val: np.ndarray, vocab: int) -> dict[str, float]:
    """Cross-entropies (nats/token) of the maximum-likelihood unigram and bigram count models,
    fitted on ``train``; on ``val``, pairs never seen in train get add-one smoothing so the
    loss stays finite (the train losses are the exact maxima of the likelihood)."""
    unigram = np.bincount(train, minlength=vocab).astype(np.float64)
    p_uni = unigram / unigram.sum()
    pairs = np.zeros((vocab, vocab))
    np.add.at(pairs, (train[:-1], train[1:]), 1)
    rows = pairs.sum(1, keepdims=True)
    p_bi = np.divide(pairs, rows, out=np.zeros_like(pairs), where=rows > 0)
    p_bi_smooth = (pairs + 1) / (rows + vocab)
    seen_val = pairs[val[:-1], val[1:]] > 0
    val_bi = np.where(seen_val, p_bi[val[:-1], val[1:]], p_bi_smooth[val[:-1], val[1:]])
    return {
        "unigram_train": float(-np.log(p_uni[train[1:]]).mean()),
        "unigram_val": float(-np.log(np.maximum(p_uni[val[1:]], 1e-12)).mean()),
        "bigram_train": float(-np.log(p_bi[train[:-1], train[1:]]).mean()),
        "bigram_val": float(-np.log(val_bi).mean()),
        "val_pairs_unseen": int((~seen_val).sum()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--models",
        nargs="+",
        default=["bigram", "context-sum", "context-mean"],
        help=f"any of {', '.join(MODELS)}, or all",
    )
    parser.add_argument("--runs", default="runs", help="where the runs go")
    args = parser.parse_args()
    names = list(MODELS) if args.models == ["all"] else args.models

    from lmforge.config import resolve_config
    from lmforge.training.trainer import prepare_data

    config = resolve_config({"out": "/tmp/unused", "data": {"corpus": "tinyshakespeare"}})
    tokenizer, stream = prepare_data(config, progress=False)
    counts = count_model_losses(
        np.asarray(stream.tokens("train"), dtype=np.int64),
        np.asarray(stream.tokens("val"), dtype=np.int64),
        tokenizer.vocab_size,
    )
    print(json.dumps(counts, indent=1))

    results = []
    for name in names:
        flags, bar, bar_text = MODELS[name]
        out = Path(args.runs) / f"bench-{name}"
        started = time.perf_counter()
        run([*LMFORGE, "train", *COMMON, *flags, "--out", str(out), "--overwrite", "--quiet"])
        wall = time.perf_counter() - started
        result = json.loads(run([*LMFORGE, "eval", str(out), "--json"]))
        metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        results.append(
            (
                name,
                metrics[-1]["step"],
                metrics[-1]["elapsed_s"],
                wall,
                result["loss"],
                bar,
                bar_text,
            )
        )

    print(
        f"\ncount models: unigram val {counts['unigram_val']:.4f}, bigram train "
        f"{counts['bigram_train']:.4f} / val {counts['bigram_val']:.4f}"
    )
    print(
        f"{'model':<14} {'steps':>6} {'train s':>8} {'wall s':>7} {'val loss':>9} "
        f"{'bits/char':>9}  bar"
    )
    for name, steps, train_s, wall, loss, bar, bar_text in results:
        ok = loss <= bar if "≤" in bar_text else loss < bar
        print(
            f"{name:<14} {steps:>6} {train_s:>8.0f} {wall:>7.0f} {loss:>9.4f} "
            f"{loss / math.log(2):>9.4f}  {bar_text}: {'PASS' if ok else 'FAIL'}"
        )


if __name__ == "__main__":
    main()
