"""Pictures of runs: loss curves, the embedding map, and several runs compared.

>>> [p.name for p in plot_run("runs/lstm").paths]   # the map itself: lmforge.embedding_map
['loss.png', 'embeddings.png', 'neighbours.txt']
>>> rows = compare_runs(["runs/bigram", "runs/lstm"], "compare.png")
>>> print(format_table(rows))
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from lmforge.data.stream import TokenStream
from lmforge.errors import LmforgeError, RunError
from lmforge.fileio import atomic_write_text, atomic_write_with, cache_dir
from lmforge.runs import METRICS_FILE, read_run_config
from lmforge.training.checkpoint import read_metrics


def pyplot() -> Any:
    """matplotlib's pyplot, drawing to files only."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    return plt


def save_png(fig: Any, path: Path) -> None:
    """Write ``fig`` to ``path`` as a PNG (atomically) and free it."""
    atomic_write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    pyplot().close(fig)


def run_metrics(run_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The metrics records of a run, with a clear error when there are none."""
    records = read_metrics(Path(run_dir) / METRICS_FILE)
    if not records:
        raise RunError(f"{run_dir} has no metrics yet; train it first")
    return records


def plot_losses(records: list[dict[str, Any]], path: Path, title: str) -> None:
    """Train and validation loss against steps (left) and tokens seen (right)."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    train = [r for r in records if r.get("train_loss") is not None]
    val = [r for r in records if r.get("val_loss") is not None]
    for ax, key, label in ((axes[0], "step", "step"), (axes[1], "tokens", "tokens seen")):
        ax.plot(
            [r[key] for r in train],
            [r["train_loss"] for r in train],
            label="train",
            lw=1,
            alpha=0.8,
        )
        ax.plot([r[key] for r in val], [r["val_loss"] for r in val], "o-", label="val", ms=3)
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("cross-entropy (nats/token)")
    axes[0].legend()
    fig.suptitle(title)
    fig.tight_layout()
    save_png(fig, path)


def pca_2d(matrix: np.ndarray) -> np.ndarray:
    """The rows of ``matrix`` projected on its first two principal components, [n, 2]."""
    centered = matrix - matrix.mean(axis=0, keepdims=True)
    _, _, vt = np.linalg.svd(centered, full_matrices=False)
    coords = centered @ vt[:2].T
    if coords.shape[1] < 2:
        coords = np.pad(coords, ((0, 0), (0, 2 - coords.shape[1])))
    return coords


@dataclasses.dataclass
class RunPictures:
    """What ``lmforge plot`` wrote: the files, the nearest-neighbours table (Markdown), and
    notes on pictures it could not draw."""

    paths: list[Path]
    neighbours: str
    notes: list[str] = dataclasses.field(default_factory=list)


def train_token_counts(config: dict[str, Any], vocab_size: int) -> np.ndarray | None:
    """How often each token occurs in the run's training split, counted from the encoded
    corpus in the token cache; None when the cache no longer has it (or the run has none,
    as an imported model)."""
    key = config.get("token_stream")
    directory = cache_dir() / "tokens" / str(key)
    if not key or not (directory / "meta.json").is_file():
        return None
    try:
        stream = TokenStream(directory, json.loads((directory / "meta.json").read_text()))
        tokens = stream.tokens("train")
    except (LmforgeError, OSError, ValueError, KeyError):
        return None  # a damaged cache entry: fall back to the vocabulary order
    counts = np.bincount(np.asarray(tokens), minlength=vocab_size)
    return counts[:vocab_size]


def most_frequent(counts: np.ndarray | None, vocab_size: int, limit: int) -> tuple[list[int], str]:
    """The ids of at most ``limit`` tokens, most frequent first (ties: lower id first; without
    ``counts``, the first ids), and a phrase for a title saying which they are.

    >>> most_frequent(np.array([5, 9, 0, 9]), 4, 2)
    ([1, 3], 'the 2 most frequent of 4 tokens')
    """
    if vocab_size <= limit:
        return list(range(vocab_size)), f"all {vocab_size:,} tokens"
    if counts is None:
        return list(range(limit)), (
            f"the first {limit} of {vocab_size:,} tokens in vocabulary order "
            "(no token counts: the run's token cache is gone)"
        )
    order = np.argsort(-counts, kind="stable")[:limit]
    return [int(i) for i in order], f"the {limit} most frequent of {vocab_size:,} tokens"


def plot_run(
    run_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str] | None = None,
    checkpoint: str = "best",
    neighbours: list[str] | None = None,
) -> RunPictures:
    """Write ``loss.png``, ``embeddings.png``, ``neighbours.txt`` and, for a bigram run,
    ``bigram.png`` for a run (into the run unless ``out_dir``). A run without training
    metrics (an imported model) gets every picture but ``loss.png``, and a note saying so.

    ``neighbours`` are the tokens whose nearest neighbours are listed (default: a few common
    ones, see :func:`lmforge.embedding_map.default_queries`).
    """
    from lmforge import embedding_map as emap
    from lmforge.runs import load_run
    from lmforge.token_classes import token_classes

    run_dir = Path(run_dir)
    target = Path(out_dir) if out_dir else run_dir
    run = load_run(run_dir, checkpoint=checkpoint, device="cpu")
    records = read_metrics(run_dir / METRICS_FILE)
    weight = run.model.embedding_weight().detach().float().cpu().numpy()
    tokens = [run.tokenizer.id_to_token(i) for i in range(weight.shape[0])]
    kind = run.tokenizer.kind
    queries = emap.find_tokens(tokens, neighbours) if neighbours else None
    counts = train_token_counts(run.config, len(tokens))
    name = f"{run_dir.name} ({run.model.family})"
    target.mkdir(parents=True, exist_ok=True)

    map_path, table_path = target / "embeddings.png", target / "neighbours.txt"
    paths, notes = [map_path, table_path], []
    if records:
        paths.insert(0, target / "loss.png")
        plot_losses(records, paths[0], name)
    else:
        source = "an imported model" if "source" in run.config else "a run with no records yet"
        notes.append(f"no training metrics in {run_dir} ({source}): loss.png not drawn")
    shown, which = most_frequent(counts, len(tokens), emap.MAX_MAP_TOKENS)
    shown.sort()  # draw in vocabulary order: the same picture whatever the counts' ties
    classes, class_names = token_classes([tokens[i] for i in shown], kind)
    table = "rows of the I×I logit table" if run.model.family == "bigram" else "input embeddings"
    emap.plot_embedding_map(
        pca_2d(weight[shown].astype(np.float64)),
        [tokens[i] for i in shown],
        classes,
        class_names,
        map_path,
        f"{name}: PCA of the {table}, {which}",
    )
    if queries is None:
        order = shown if counts is None else [int(i) for i in np.argsort(-counts, kind="stable")]
        queries = emap.default_queries(tokens, kind, order)
    text = emap.neighbours_table(weight, tokens, queries)
    atomic_write_text(table_path, text + "\n")
    if run.model.family == "bigram":
        paths.append(target / "bigram.png")
        plot_bigram_run(weight, tokens, counts, paths[-1], name)
    return RunPictures(paths, text, notes)


def plot_bigram_run(
    logits: np.ndarray, tokens: list[str], counts: np.ndarray | None, path: Path, name: str
) -> None:
    """The bigram's I×I logit table as the heat-map of p(next | current) (the most frequent
    tokens only, when the vocabulary is too large for readable labels)."""
    from lmforge import embedding_map as emap

    ids, which = most_frequent(counts, len(tokens), emap.MAX_HEATMAP_TOKENS)
    ids.sort()
    emap.plot_bigram_table(
        emap.next_token_probabilities(logits)[np.ix_(ids, ids)],
        [tokens[i] for i in ids],
        path,
        f"{name}: p(next | current), {which}",
    )


def summarize_run(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """One row of ``lmforge compare``: what the run is and how far it got."""
    run_dir = Path(run_dir)
    config = read_run_config(run_dir)
    records = run_metrics(run_dir)
    last = records[-1]
    val = [r for r in records if r.get("val_loss") is not None]
    val_loss = val[-1]["val_loss"] if val else math.nan
    data = config.get("data", {}).get("val", {})
    chars_per_token = data["chars"] / data["tokens"] if data.get("tokens") else math.nan
    elapsed = float(last.get("elapsed_s", math.nan))
    return {
        "run": run_dir.name,
        "model": config["model"]["family"],
        "parameters": config.get("parameters"),
        "steps": last["step"],
        "tokens": last["tokens"],
        "wall_s": elapsed,
        "tokens_per_s": last["tokens"] / elapsed if elapsed else math.nan,
        "val_loss": val_loss,
        "perplexity": math.exp(val_loss),
        "bits_per_char": val_loss / chars_per_token / math.log(2),
        "val_curve": [(r["step"], r["tokens"], r.get("elapsed_s"), r["val_loss"]) for r in val],
    }


def compare_runs(run_dirs: list[str], out_png: str | os.PathLike[str] | None) -> list[dict]:
    """Summaries of several runs, and their validation curves on one PNG (against tokens seen
    and against wall time)."""
    rows = [summarize_run(d) for d in run_dirs]
    if out_png:
        plt = pyplot()
        fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
        for row in rows:
            curve = row["val_curve"]
            label = f"{row['run']} ({row['model']})"
            axes[0].plot([c[1] for c in curve], [c[3] for c in curve], "o-", ms=3, label=label)
            axes[1].plot([c[2] for c in curve], [c[3] for c in curve], "o-", ms=3, label=label)
        axes[0].set_xlabel("tokens seen")
        axes[1].set_xlabel("wall time (s)")
        axes[0].set_ylabel("validation loss (nats/token)")
        for ax in axes:
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=8)
        fig.tight_layout()
        save_png(fig, Path(out_png))
    return rows


COLUMNS = [
    ("run", "{}"),
    ("model", "{}"),
    ("parameters", "{:,}"),
    ("steps", "{:,}"),
    ("tokens", "{:,}"),
    ("wall_s", "{:.0f}"),
    ("tokens_per_s", "{:,.0f}"),
    ("val_loss", "{:.4f}"),
    ("perplexity", "{:.3f}"),
    ("bits_per_char", "{:.4f}"),
]


def format_table(rows: list[dict[str, Any]]) -> str:
    """The compare table as aligned text."""
    headers = [
        "run",
        "model",
        "parameters",
        "steps",
        "tokens seen",
        "wall time (s)",
        "tokens/s",
        "val loss",
        "perplexity",
        "bits/char",
    ]
    cells = [
        [fmt.format(row[key]) if row[key] is not None else "-" for key, fmt in COLUMNS]
        for row in rows
    ]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)
