"""The model ladder on three corpora (issue 11): every family trained with `lmforge train` for
one time budget on Tiny Shakespeare characters, WikiText-2 words and WikiText-2 BPE 8192,
then scored on its whole validation and test splits with `lmforge eval`.

    python benchmarks/ladder.py --dry-run                          # the 21 commands, nothing run
    python benchmarks/ladder.py --corpora tinyshakespeare --write  # 7 runs of 600 s, then docs
    python benchmarks/ladder.py --corpora wikitext-2-word --families lstm-wt2 --peer --write
    python benchmarks/ladder.py --write                            # re-render from stored rows

Each row is stored in benchmarks/results/ladder.json as soon as it is measured (keyed by
corpus and family, with its date, budget, machine, git commit and command) and merged with the
rows of earlier invocations, so the 21 runs can be spread over several sessions. The tables
are rendered from all stored rows; `--write` puts them between the `<!-- ladder:begin -->` and
`<!-- ladder:end -->` markers of BENCHMARKS.md (and of docs/guide.md when it has them) and
draws docs/img/ladder-<corpus>.png, every validation curve of a corpus against wall time.
Runs go to <--runs>/ladder-<corpus>-<family> (replaced).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import os
import platform
import shlex
import subprocess
import time
from pathlib import Path
from typing import Any

from bench_runs import LMFORGE, REPO, run, summarize

from lmforge.errors import LmforgeError

RESULTS = REPO / "benchmarks" / "results" / "ladder.json"
BEGIN, END = "<!-- ladder:begin -->", "<!-- ladder:end -->"
BPE_VOCAB = 8192
# what a run of this script writes (they do not make the checkout "dirty")
OWN_OUTPUTS = ("benchmarks/results", "BENCHMARKS.md", "docs/guide.md", "docs/img/ladder-*.png")


@dataclasses.dataclass(frozen=True)
class LadderCorpus:
    """One corpus of the ladder: the `lmforge train` flags that select its text and tokenizer,
    and the splits scored (Tiny Shakespeare has no test split)."""

    title: str
    corpus: str
    flags: tuple[str, ...]
    splits: tuple[str, ...]


CORPORA: dict[str, LadderCorpus] = {
    "tinyshakespeare": LadderCorpus(
        "Tiny Shakespeare, characters (last 10 % held out)",
        "tinyshakespeare",
        ("--corpus", "tinyshakespeare", "--tokenizer", "char"),
        ("val",),
    ),
    "wikitext-2-word": LadderCorpus(
        "WikiText-2, words (its own train/valid/test files, whitespace split)",
        "wikitext-2",
        ("--corpus", "wikitext-2", "--tokenizer", "word", "--word-split", "whitespace"),
        ("val", "test"),
    ),
    "wikitext-2-bpe": LadderCorpus(
        f"WikiText-2, BPE {BPE_VOCAB} (merges learned once from train.txt)",
        "wikitext-2",
        ("--corpus", "wikitext-2", "--tokenizer", "bpe", "--tokenizer-file", "{bpe_file}"),
        ("val", "test"),
    ),
}

# family -> the flags that pick it; everything else is the family's defaults
FAMILIES: dict[str, tuple[str, ...]] = {
    "bigram": ("--model", "bigram"),
    "context-sum": ("--model", "context", "--context-mode", "sum"),
    "context-mean": ("--model", "context", "--context-mode", "mean"),
    "rnn": ("--model", "rnn"),
    "gru": ("--model", "gru"),
    "lstm": ("--model", "lstm"),
    "transformer": ("--model", "transformer"),
}
# rows beyond the ladder, run only when named: family -> (flags, the corpora it applies to)
EXTRA_FAMILIES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "lstm-wt2": (("--model", "lstm", "--preset", "wt2"), ("wikitext-2-word",)),
}
# Where a family's defaults cannot run on a corpus, the flags that make it fit (shown in the
# table). Words: a 33,278 × 33,278 bigram table is 1.1 G parameters (17.7 GB with AdamW's
# state), so its batch shrinks to the word-language-model example's 32 × 35 so that the logits
# fit beside it; a context model gets 256-wide embeddings and a head instead of such a table.
CORPUS_FLAGS: dict[tuple[str, str], tuple[str, ...]] = {
    ("wikitext-2-word", "bigram"): ("--batch-size", "32", "--block-size", "35"),
    ("wikitext-2-word", "context-sum"): ("--n-embd", "256"),
    ("wikitext-2-word", "context-mean"): ("--n-embd", "256"),
}
PEER = "peer-example"  # benchmarks/word_lm_example.py, on wikitext-2-word

# Published figures, not measured here: (corpus, what, figure, source)
ANCHORS: list[tuple[str, str, str, str]] = [
    (
        "tinyshakespeare",
        "nanoGPT shakespeare-char, GPU config (6×384, 5000 iterations)",
        "val loss 1.4697",
        "nanoGPT README",
    ),
    (
        "tinyshakespeare",
        "nanoGPT shakespeare-char, CPU config (4×128, 2000 iterations)",
        "val loss 1.88",
        "nanoGPT README",
    ),
    (
        "wikitext-2-word",
        "AWD-LSTM (3-layer, 24 M parameters, 750 epochs on a GPU)",
        "test perplexity 65.8 (val 68.6)",
        "Merity et al. 2017, table 2",
    ),
    (
        "wikitext-2-word",
        "GPT-2 117M, zero-shot (trained on WebText)",
        "test perplexity 29.41",
        "Radford et al. 2019, table 3",
    ),
]


def train_command(corpus: str, family: str, budget: float, runs: Path, bpe_file: Path) -> list[str]:
    """The `lmforge train` command of one row of the ladder.

    >>> train_command("tinyshakespeare", "gru", 600, Path("runs"), Path("bpe.json"))[3:9]
    ['train', '--corpus', 'tinyshakespeare', '--tokenizer', 'char', '--model']
    """
    flags = [flag.format(bpe_file=bpe_file) for flag in CORPORA[corpus].flags]
    return [
        *LMFORGE,
        "train",
        *flags,
        *family_flags(corpus, family),
        *("--time-budget", f"{budget:g}", "--device", "cpu"),
        *("--out", str(run_dir(runs, corpus, family)), "--overwrite", "--quiet"),
    ]


def family_flags(corpus: str, family: str) -> tuple[str, ...]:
    """The flags that pick ``family`` on ``corpus`` (shown in its row).

    >>> family_flags("wikitext-2-word", "context-mean")
    ('--model', 'context', '--context-mode', 'mean', '--n-embd', '256')
    """
    model = FAMILIES[family] if family in FAMILIES else EXTRA_FAMILIES[family][0]
    return (*model, *CORPUS_FLAGS.get((corpus, family), ()))


def eval_command(out: Path, split: str, block_size: int) -> list[str]:
    """`lmforge eval` of a whole split: non-overlapping windows of the training window for
    models with a finite context, the state carried through the whole text for the others."""
    return [*LMFORGE, "eval", str(out), "--split", split, "--stride", str(block_size), "--json"]


def bpe_command(bpe_file: Path) -> list[str]:
    """Learn the BPE tokenizer of the WikiText-2 BPE rows once, from train.txt."""
    return [
        *LMFORGE,
        *("tokenize", "train", "wikitext-2", "--kind", "bpe"),
        *("--vocab-size", str(BPE_VOCAB), "-o", str(bpe_file)),
    ]


def run_dir(runs: Path, corpus: str, family: str) -> Path:
    """Where the run of one row goes."""
    return runs / f"ladder-{corpus}-{family}"


def planned_rows(corpora: list[str], families: list[str]) -> list[tuple[str, str]]:
    """(corpus, family) for every family that applies to each corpus, in ladder order."""
    return [
        (corpus, family)
        for corpus in corpora
        for family in families
        if family in FAMILIES or corpus in EXTRA_FAMILIES[family][1]
    ]


def row_key(row: dict[str, Any]) -> str:
    """The key of a row in the results file: its corpus and family, and for the rows beyond
    the ladder (the preset, the peer) also its budget, so that their 600 s and 3600 s runs
    stand side by side.

    >>> row_key({"corpus": "wikitext-2-word", "family": "lstm-wt2", "budget": 3600.0})
    'wikitext-2-word/lstm-wt2@3600s'
    """
    key = f"{row['corpus']}/{row['family']}"
    return key if row["family"] in FAMILIES else f"{key}@{row['budget']:g}s"


def merge_rows(stored: dict[str, Any], new_rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The results file's rows with ``new_rows`` added, each replacing any stored row of the
    same key (see :func:`row_key`).

    >>> merge_rows({"a/gru": {"corpus": "a", "family": "gru", "budget": 600, "steps": 1}},
    ...            [{"corpus": "a", "family": "lstm", "budget": 600, "steps": 2}]).keys()
    dict_keys(['a/gru', 'a/lstm'])
    """
    merged = dict(stored)
    for row in new_rows:
        merged[row_key(row)] = row
    return merged


def load_results(path: Path = RESULTS) -> dict[str, Any]:
    """The stored rows (none when the file does not exist yet)."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise LmforgeError(f"{path} is not valid JSON ({exc}); fix or delete it") from None
    return data.get("rows", {})


def save_results(rows: dict[str, Any], path: Path = RESULTS) -> None:
    """Write the rows atomically (a crash mid-write keeps the previous file)."""
    from lmforge.fileio import atomic_write_json

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, {"rows": rows})


def bits_per_char(loss: float, predictions: int, chars: int) -> float:
    """Total nats of a split / its characters / ln 2.

    >>> round(bits_per_char(math.log(2), predictions=10, chars=5), 6)
    2.0
    """
    return loss * predictions / chars / math.log(2)


def split_chars(corpus: str) -> dict[str, int]:
    """Characters of each split's text as lmforge reads it (the same for every tokenizer)."""
    from lmforge.data.corpora import resolve_corpus
    from lmforge.data.stream import split_texts

    return {split: len(text) for split, text in split_texts(resolve_corpus(corpus)).items()}


def val_curve(out: Path) -> list[list[float]]:
    """[elapsed seconds, validation loss] of every evaluation in a run's metrics."""
    from lmforge.training.checkpoint import read_metrics

    records = read_metrics(out / "metrics.jsonl")
    return [[r["elapsed_s"], r["val_loss"]] for r in records if r.get("val_loss") is not None]


def machine() -> str:
    """The CPU, its cores and the torch version, in words."""
    import torch

    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [
            line.split(":", 1)[1].strip()
            for line in cpuinfo.read_text().splitlines()
            if line.startswith("model name")
        ]
        model = names[0] if names else model
    return f"{model}, {os.cpu_count()} cores, torch {torch.__version__}"


def git_commit() -> str:
    """The short hash of the checked-out commit (+ "-dirty" with uncommitted changes other
    than the results and documents this script writes itself)."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=REPO, capture_output=True, text=True, check=False
        ).stdout.strip()

    own = [f":(exclude){path}" for path in OWN_OUTPUTS]
    changed = git("status", "--porcelain", "--", ".", *own)
    return git("rev-parse", "--short", "HEAD") + ("-dirty" if changed else "")


def measure_row(
    corpus: str, family: str, budget: float, runs: Path, bpe_file: Path
) -> dict[str, Any]:
    """Train one row's run, score its splits, and return its results-file row."""
    command = train_command(corpus, family, budget, runs, bpe_file)
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    run(command)
    wall = time.perf_counter() - started
    out = run_dir(runs, corpus, family)
    config = json.loads((out / "config.json").read_text())["run"]
    chars = split_chars(CORPORA[corpus].corpus)
    scores = {}
    for split in CORPORA[corpus].splits:
        result = json.loads(run(eval_command(out, split, config["train"]["block_size"])))
        scores[split] = split_score(result["loss"], result["tokens"], chars[split])
        scores["windows"] = result["windows"]
    return {
        "corpus": corpus,
        "family": family,
        "flags": " ".join(family_flags(corpus, family)),
        **summarize(out),
        "wall_s": round(wall, 1),
        **scores,
        "curve": val_curve(out),
        **provenance(budget, shlex.join(command), load_before),
    }


def split_score(loss: float, predictions: int, chars: int) -> dict[str, float]:
    """Loss, perplexity and bits per character of one split."""
    return {
        "loss": loss,
        "perplexity": math.exp(loss),
        "bits_per_char": bits_per_char(loss, predictions, chars),
        "predictions": predictions,
        "chars": chars,
    }


def provenance(budget: float, command: str, load_before: float) -> dict[str, Any]:
    """When, where, at which commit and with which command a row was measured."""
    return {
        "budget": budget,
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "load_average": [round(load_before, 1), round(os.getloadavg()[0], 1)],
        "commit": git_commit(),
        "command": command,
    }


def render_tables(rows: dict[str, Any], budget: float, image_dir: str) -> str:
    """The Markdown of the ladder: one table per corpus with rows (in ladder order), its
    published anchors and its picture (``image_dir`` is the picture folder relative to the
    document). A row trained for another budget than ``budget`` says so."""
    order = [*FAMILIES, *EXTRA_FAMILIES, PEER]
    parts = [
        f"Each model trains for `--time-budget {budget:g}` seconds on the CPU with its family's "
        "defaults plus the flags shown, then `lmforge eval RUN --split S --stride BLOCK --json` "
        "scores every prediction of the split (the Transformer in non-overlapping windows of its "
        "training window; the recurrent models carry their state through the whole split; the "
        "context models slide their window of the last `--block-size` tokens along it, so "
        "every prediction averages a full window, where the training estimates of the curves "
        "average windows of 1 to `--block-size` tokens; the bigram needs no context). "
        "**Bits per character** = total nats over the split's predictions / "
        "characters of the split's text as read (spaces and newlines included; for "
        "WikiText-2 the characters of test.txt, whatever the tokenizer) / ln 2, so the three "
        "tokenizations of WikiText-2 are compared on the same text. It is the test split's "
        "where there is one, else the validation split's."
    ]
    for corpus, spec in CORPORA.items():
        mine = sorted(
            (row for row in rows.values() if row["corpus"] == corpus),
            key=lambda row: (
                order.index(row["family"]) if row["family"] in order else len(order),
                row["budget"],
            ),
        )
        if not mine:
            continue
        parts.append(f"**{spec.title}**\n\n{corpus_table(mine, budget)}\n\n{measured(mine)}")
        anchors = [a for a in ANCHORS if a[0] == corpus]
        if anchors:
            lines = [f"- {what}: {figure} ({source})" for _, what, figure, source in anchors]
            note = ""
            if corpus == "wikitext-2-word":
                note = (
                    "\n\nThese are on WikiText-2's own word-level test set (33,278 words with "
                    "`<unk>`), so they compare with the word-level rows only; GPT-2's figure is "
                    "on a detokenized text with its own BPE, so it compares only roughly."
                )
            parts.append("Published, not measured here:\n\n" + "\n".join(lines) + note)
        parts.append(f"![validation loss against wall time]({image_dir}/ladder-{corpus}.png)")
    return "\n\n".join(parts)


def measured(rows: list[dict[str, Any]]) -> str:
    """When and where ``rows`` were measured, and how loaded the machine was, in one line.

    >>> measured([{"date": "2026-11-30 09:12 UTC", "machine": "EPYC, 2 cores",
    ...            "load_average": [0.9, 2.1], "commit": "abc1234"}])
    'Measured 2026-11-30 on EPYC, 2 cores (load average 0.9–2.1), commit abc1234.'
    """
    days = sorted({row.get("date", "?")[:10] for row in rows})
    machines = sorted({row.get("machine", "?") for row in rows})
    loads = [load for row in rows for load in row.get("load_average", [])]
    load = f" (load average {min(loads):g}–{max(loads):g})" if loads else ""
    commits = sorted({row.get("commit", "?") for row in rows})
    return (
        f"Measured {', '.join(days)} on {'; '.join(machines)}{load}, commit {', '.join(commits)}."
    )


def row_name(row: dict[str, Any], budget: float) -> str:
    """A row's name in tables and legends: its family, and its budget where that is not the
    table's.

    >>> row_name({"family": "lstm-wt2", "budget": 3600.0}, 600.0)
    'lstm-wt2 (3600 s budget)'
    """
    name = row["family"]
    return name if row["budget"] == budget else f"{name} ({row['budget']:g} s budget)"


def corpus_table(rows: list[dict[str, Any]], budget: float) -> str:
    """One corpus's Markdown table."""
    head = (
        "| model | flags | parameters | steps | tokens seen | train time | tokens/s | val loss "
        "| val ppl | test loss | test ppl | bits/char |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|"
    )
    lines = [head]
    for row in rows:
        name = row_name(row, budget)
        test = row.get("test")
        final = test or row["val"]
        lines.append(
            f"| {name} | `{row['flags']}` | {row['parameters']:,} | {row['steps']:,} | "
            f"{row['tokens']:,} | {row['train_s']:.0f} s | {row['tokens_per_s']:,.0f} | "
            f"{row['val']['loss']:.4f} | {row['val']['perplexity']:.2f} | "
            + (f"{test['loss']:.4f} | {test['perplexity']:.2f} | " if test else "– | – | ")
            + f"{final['bits_per_char']:.3f} |"
        )
    return "\n".join(lines)


def replace_between_markers(text: str, content: str, where: str = "the document") -> str:
    """``text`` with everything between the ladder markers replaced by ``content``; the same
    result however often it is applied.

    >>> replace_between_markers("a <!-- ladder:begin -->old<!-- ladder:end --> b", "new")
    'a <!-- ladder:begin -->\\nnew\\n<!-- ladder:end --> b'
    """
    start, stop = text.find(BEGIN), text.find(END)
    if start < 0 or stop < start:
        raise LmforgeError(
            f"{where} has no {BEGIN} ... {END} pair; add both markers (begin first) where "
            "the ladder's tables go"
        )
    return text[: start + len(BEGIN)] + f"\n{content}\n" + text[stop:]


def plot_curves(rows: dict[str, Any], corpus: str, path: Path, budget: float) -> None:
    """Every stored validation curve of ``corpus`` against wall time, log-scaled, in one PNG
    (rows named as in the table for ``budget``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lmforge.fileio import atomic_write_with

    fig, ax = plt.subplots(figsize=(8, 5))
    ax.set_prop_cycle(color=[*plt.cm.tab10.colors, *plt.cm.Dark2.colors])  # 18 distinct
    for row in rows.values():
        points = [p for p in row.get("curve", []) if p[0] > 0]  # log scale: step 0 is at 0 s
        if row["corpus"] == corpus and points:
            ax.plot(*zip(*points, strict=True), marker=".", label=row_name(row, budget))
    ax.set_xscale("log")
    ax.set_xlabel("wall time (s, training only)")
    ax.set_ylabel("validation loss (nats/token, estimate)")
    ax.set_title(CORPORA[corpus].title)
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)


def write_docs(rows: dict[str, Any], budget: float) -> None:
    """Put the tables into BENCHMARKS.md (and docs/guide.md if it has the markers) and draw
    one picture per corpus."""
    from lmforge.fileio import atomic_write_text

    targets = [(REPO / "BENCHMARKS.md", "docs/img")]
    guide = REPO / "docs" / "guide.md"
    if guide.is_file() and BEGIN in guide.read_text(encoding="utf-8"):
        targets.append((guide, "img"))
    for path, image_dir in targets:
        text = path.read_text(encoding="utf-8")
        tables = render_tables(rows, budget, image_dir)
        atomic_write_text(path, replace_between_markers(text, tables, str(path.name)))
        print(f"wrote the ladder into {path.relative_to(REPO)}")
    for corpus in CORPORA:
        if any(row["corpus"] == corpus for row in rows.values()):
            plot_curves(rows, corpus, REPO / "docs" / "img" / f"ladder-{corpus}.png", budget)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--corpora", nargs="+", choices=list(CORPORA), help="default: all three")
    parser.add_argument(
        "--families",
        nargs="+",
        choices=[*FAMILIES, *EXTRA_FAMILIES],
        help="default: the 7 families of the ladder; lstm-wt2 is the word-level LSTM preset "
        "(wikitext-2-word only)",
    )
    parser.add_argument("--time-budget", type=float, default=600.0, help="seconds per model")
    parser.add_argument("--runs", type=Path, default=Path("runs"), help="where the runs go")
    parser.add_argument("--peer", action="store_true", help="also run word_lm_example.py")
    parser.add_argument("--dry-run", action="store_true", help="print the commands only")
    parser.add_argument(
        "--write",
        action="store_true",
        help="update BENCHMARKS.md, the guide and the pictures (alone: from the stored rows, "
        "nothing trained)",
    )
    parser.add_argument("--results", type=Path, default=RESULTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    render_only = args.write and not args.peer and args.corpora is args.families is None
    bpe_file = args.runs / f"ladder-wikitext-2-bpe{BPE_VOCAB}.json"
    plan = planned_rows(args.corpora or list(CORPORA), args.families or list(FAMILIES))
    if args.dry_run:
        if any(corpus == "wikitext-2-bpe" for corpus, _ in plan):
            print(shlex.join(bpe_command(bpe_file)))
        for corpus, family in plan:
            print(shlex.join(train_command(corpus, family, args.time_budget, args.runs, bpe_file)))
        if args.peer:
            print(shlex.join(peer_command(args.time_budget, args.runs)))
        return
    if not render_only:
        run_plan(args, plan, bpe_file)
    if args.write:
        write_docs(load_results(args.results), args.time_budget)


def run_plan(args: argparse.Namespace, plan: list[tuple[str, str]], bpe_file: Path) -> None:
    """Measure the planned rows (and the peer), storing each as soon as it is done."""
    if any(corpus == "wikitext-2-bpe" for corpus, _ in plan) and not bpe_file.is_file():
        args.runs.mkdir(parents=True, exist_ok=True)
        run(bpe_command(bpe_file))
    for corpus, family in plan:
        row = measure_row(corpus, family, args.time_budget, args.runs, bpe_file)
        save_results(merge_rows(load_results(args.results), [row]), args.results)
        print(f"{corpus} {family}: val {row['val']['loss']:.4f}", flush=True)
    if args.peer:
        load_before = os.getloadavg()[0]
        command = peer_command(args.time_budget, args.runs)
        result = json.loads(run(command))
        row = {**result, **provenance(args.time_budget, shlex.join(command), load_before)}
        save_results(merge_rows(load_results(args.results), [row]), args.results)


def peer_command(budget: float, runs: Path) -> list[str]:
    """PyTorch's word-language-model recipe (benchmarks/word_lm_example.py) for ``budget``."""
    script = REPO / "benchmarks" / "word_lm_example.py"
    return [LMFORGE[0], str(script), "--time-budget", f"{budget:g}", "--json"]


if __name__ == "__main__":
    main()
