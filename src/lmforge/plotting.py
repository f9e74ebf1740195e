"""Pictures of runs: loss curves, the embedding map, and several runs compared.

>>> plot_run("runs/lstm")          # writes runs/lstm/loss.png and runs/lstm/embeddings.png
[PosixPath('runs/lstm/loss.png'), PosixPath('runs/lstm/embeddings.png')]
>>> rows = compare_runs(["runs/bigram", "runs/lstm"], "compare.png")
>>> print(format_table(rows))
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from lmforge.errors import RunError
from lmforge.fileio import atomic_write_with
from lmforge.runs import METRICS_FILE, read_run_config
from lmforge.training.checkpoint import read_metrics

MAX_LABELS = 150


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> None:
    atomic_write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    _pyplot().close(fig)


def run_metrics(run_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The metrics records of a run, with a clear error when there are none."""
    records = read_metrics(Path(run_dir) / METRICS_FILE)
    if not records:
        raise RunError(f"{run_dir} has no metrics yet; train it first")
    return records


def plot_losses(records: list[dict[str, Any]], path: Path, title: str) -> None:
    """Train and validation loss against steps (left) and tokens seen (right)."""
    plt = _pyplot()
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
    _save(fig, path)


def printable(token: str) -> str:
    """A token as it should appear in a picture: whitespace made visible.

    >>> printable(" the\\n")
    '␣the↵'
    """
    return token.replace(" ", "␣").replace("\n", "↵").replace("\t", "⇥").replace("\r", "␍")


def pca_2d(matrix: np.ndarray) -> np.ndarray:
    """The rows of ``matrix`` projected on its first two principal components, [n, 2]."""
    centered = matrix - matrix.mean(axis=0, keepdims=True)
    _, _, vt = np.linalg.svd(centered, full_matrices=False)
    coords = centered @ vt[:2].T
    if coords.shape[1] < 2:
        coords = np.pad(coords, ((0, 0), (0, 2 - coords.shape[1])))
    return coords


def plot_embeddings(weight: np.ndarray, tokens: list[str], path: Path, title: str) -> None:
    """The embedding matrix [I, D] projected to 2-D by PCA, points labelled with their tokens
    (the first ``MAX_LABELS`` printable ones when the vocabulary is larger)."""
    plt = _pyplot()
    coords = pca_2d(weight.astype(np.float64))
    fig, ax = plt.subplots(figsize=(9, 8))
    ax.scatter(coords[:, 0], coords[:, 1], s=6, alpha=0.5)
    labelled = [i for i, t in enumerate(tokens) if printable(t).isprintable()][:MAX_LABELS]
    for i in labelled:
        ax.annotate(printable(tokens[i]), coords[i], fontsize=8, alpha=0.85)
    shown = "" if len(labelled) == len(tokens) else f" ({len(labelled)} of {len(tokens)} labelled)"
    ax.set_title(f"{title}: token embeddings, PCA{shown}")
    ax.set_xlabel("principal component 1")
    ax.set_ylabel("principal component 2")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    _save(fig, path)


def plot_run(
    run_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str] | None = None,
    checkpoint: str = "best",
) -> list[Path]:
    """Write ``loss.png`` and ``embeddings.png`` for a run (into the run unless ``out_dir``)."""
    from lmforge.runs import load_run

    run_dir = Path(run_dir)
    target = Path(out_dir) if out_dir else run_dir
    records = run_metrics(run_dir)
    run = load_run(run_dir, checkpoint=checkpoint, device="cpu")
    name = f"{run_dir.name} ({run.model.family})"
    loss_png, embeddings_png = target / "loss.png", target / "embeddings.png"
    plot_losses(records, loss_png, name)
    weight = run.model.embedding_weight().detach().float().cpu().numpy()
    tokens = [run.tokenizer.id_to_token(i) for i in range(weight.shape[0])]
    plot_embeddings(weight, tokens, embeddings_png, name)
    return [loss_png, embeddings_png]


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
        plt = _pyplot()
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
        _save(fig, Path(out_png))
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
