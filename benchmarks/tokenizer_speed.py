"""Tokenizer benchmark (issue 3): lmforge's byte-level BPE against its peers, in one run.

Peers, all on one thread (RAYON_NUM_THREADS=1, TOKENIZERS_PARALLELISM=false, tiktoken's
single-threaded ``encode_ordinary``):

- Hugging Face ``tokenizers``: a ``BPE`` model with the ``ByteLevel`` pre-tokenizer (GPT-2's
  split) trained by ``BpeTrainer`` on the same file and vocabulary size; for encoding speed, the
  ``tokenizer.json`` lmforge exports (the same merges).
- ``tiktoken``: an ``Encoding`` built from lmforge's merges (encoding only; it cannot train).
- minbpe (not on PyPI): ``minbpe_train`` / ``minbpe_encode`` below restate minbpe's
  ``RegexTokenizer`` algorithm (recount every pair of every chunk before each merge; encode each
  chunk by repeatedly merging its lowest-ranked pair, no cache). Training it on the full corpora
  takes minutes to hours, so it is measured on a slice (``--minbpe-chars``, ``--minbpe-vocab``)
  against lmforge on the same slice, and the issue's full-size figures are quoted.

Training is timed as whole processes (``python -m lmforge tokenize train`` against a fresh
Python that imports ``tokenizers`` and trains), so start-up and imports count. Encoding is timed
in-process over the whole corpus text, with a fresh lmforge tokenizer (empty cache) each time.
Figures are medians of ``--repeats`` runs.

    python benchmarks/tokenizer_speed.py                 # about two minutes
    python benchmarks/tokenizer_speed.py --big           # + peak memory training on a 100 MB corpus
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from itertools import pairwise
from pathlib import Path
from typing import Any, TypeVar

os.environ["RAYON_NUM_THREADS"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
# This file is named like the Hugging Face package: keep its folder off the import path.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

TASKS = [("tinyshakespeare", "train", 4096), ("wikitext-2", "train", 8192)]
PATTERN = "gpt2"  # the split of Hugging Face's ByteLevel pre-tokenizer
T = TypeVar("T")
Row = tuple[str, str, str, str, str]

HF_TRAIN = """
import os, sys
os.environ["RAYON_NUM_THREADS"] = "1"; os.environ["TOKENIZERS_PARALLELISM"] = "false"
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
tok = Tokenizer(models.BPE())
tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
tok.decoder = decoders.ByteLevel()
trainer = trainers.BpeTrainer(
    vocab_size=int(sys.argv[2]),
    initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    show_progress=False,
)
tok.train([sys.argv[1]], trainer)
tok.save(sys.argv[3])
"""


def median_time(run: Callable[[], object], repeats: int) -> float:
    """The median wall time of ``repeats`` calls of ``run``."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def median_cold(make: Callable[[], T], run: Callable[[T], object], repeats: int) -> float:
    """The median time of ``run(make())``, with ``make`` (a fresh tokenizer, its cache empty)
    outside the timing."""
    times = []
    for _ in range(repeats):
        fresh = make()
        start = time.perf_counter()
        run(fresh)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def process(args: list[str]) -> Callable[[], None]:
    def run() -> None:
        subprocess.run(args, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    return run


# --- minbpe's algorithm, restated ------------------------------------------------------------


def minbpe_train(text: str, vocab_size: int, pattern: str) -> dict[tuple[int, int], int]:
    """minbpe's RegexTokenizer.train: split, then for each merge recount all pairs of all
    chunks, take the most frequent (first seen on ties), and rewrite every chunk."""
    import regex

    chunks = [list(piece.encode("utf-8")) for piece in regex.findall(pattern, text)]
    merges: dict[tuple[int, int], int] = {}
    for i in range(vocab_size - 256):
        counts: dict[tuple[int, int], int] = {}
        for ids in chunks:
            for pair in pairwise(ids):
                counts[pair] = counts.get(pair, 0) + 1
        if not counts:
            break
        pair = max(counts, key=counts.get)  # type: ignore[arg-type]
        merges[pair] = 256 + i
        chunks = [_replace(ids, pair, 256 + i) for ids in chunks]
    return merges


def minbpe_encode(text: str, merges: dict[tuple[int, int], int], pattern: str) -> list[int]:
    """minbpe's RegexTokenizer.encode_ordinary: each chunk merged by lowest rank, no cache."""
    import regex

    out: list[int] = []
    for piece in regex.findall(pattern, text):
        ids = list(piece.encode("utf-8"))
        while len(ids) >= 2:
            pair = min(pairwise(ids), key=lambda p: merges.get(p, float("inf")))
            if pair not in merges:
                break
            ids = _replace(ids, pair, merges[pair])
        out.extend(ids)
    return out


def _replace(ids: list[int], pair: tuple[int, int], new: int) -> list[int]:
    out, i = [], 0
    while i < len(ids):
        if i < len(ids) - 1 and ids[i] == pair[0] and ids[i + 1] == pair[1]:
            out.append(new)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


# --- the benchmark ---------------------------------------------------------------------------


def machine() -> str:
    """Python and package versions, and the CPU (``lscpu``)."""
    from importlib.metadata import PackageNotFoundError, version

    packages = []
    for name in ("numpy", "regex", "tokenizers", "tiktoken", "torch"):
        try:
            packages.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            packages.append(f"{name} missing")
    lines = [f"python {platform.python_version()}, " + ", ".join(packages)]
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        wanted = ("Model name", "CPU(s):", "Thread(s) per core", "CPU max MHz")
        lines += [line.strip() for line in lscpu.splitlines() if line.startswith(wanted)]
    except OSError:
        lines.append(platform.processor())
    return "\n".join(lines)


def fresh_tokenizer(path: Path, engine: str) -> Any:
    """The tokenizer saved at ``path``, loaded anew (empty cache) on the given engine."""
    from lmforge.tokenizers import load_tokenizer

    os.environ["LMFORGE_BPE_ENGINE"] = engine
    tok = load_tokenizer(path)
    tok.engine()  # type: ignore[attr-defined]
    return tok


def bench_corpus(name: str, split: str, vocab_size: int, repeats: int, work: Path) -> list[Row]:
    """Training time, encoding speed and bytes per token on one corpus."""
    from tokenizers import Tokenizer

    from lmforge.data.corpora import resolve_corpus
    from lmforge.tokenizers.engines import to_tiktoken
    from lmforge.tokenizers.export import export_hf

    corpus = resolve_corpus(name)
    path = corpus.splits[split][0]
    text = corpus.read(split)
    n_bytes = len(text.encode("utf-8"))
    mb = n_bytes / 1e6
    ours, hf_out = work / f"{name}.json", work / f"{name}-hf.json"
    lm_cmd = [sys.executable, "-m", "lmforge", "tokenize", "train", "--vocab-size"]
    lm_cmd += [str(vocab_size), "--pattern", PATTERN, str(path), "-o", str(ours), "--quiet"]
    hf_cmd = [sys.executable, "-c", HF_TRAIN, str(path), str(vocab_size), str(hf_out)]
    t_lm = median_time(process(lm_cmd), repeats)
    t_hf = median_time(process(hf_cmd), repeats)

    tok = fresh_tokenizer(ours, "python")
    hf_same = Tokenizer.from_file(str(export_hf(tok, work / f"{name}-same.json")))
    hf_trained = Tokenizer.from_file(str(hf_out))
    enc = to_tiktoken(tok)
    engine_tok = fresh_tokenizer(ours, "tiktoken")
    ids = tok.encode(text)
    assert enc.encode_ordinary(text) == ids == hf_same.encode(text).ids
    assert engine_tok.encode(text) == ids
    t_py = median_cold(lambda: fresh_tokenizer(ours, "python"), lambda t: t.encode(text), repeats)
    t_eng = median_time(lambda: engine_tok.encode(text), repeats)
    t_hf_enc = median_time(lambda: hf_same.encode(text), repeats)
    t_tik = median_time(lambda: enc.encode_ordinary(text), repeats)
    bpt_lm = n_bytes / len(ids)
    bpt_hf = n_bytes / len(hf_trained.encode(text).ids)
    bpt_tik = n_bytes / len(enc.encode_ordinary(text))
    return [
        (
            f"train {name} → {vocab_size} (whole process, s)",
            f"{t_lm:.2f}",
            f"{t_hf:.2f}",
            "–",
            f"{t_lm / t_hf:.2f}× HF's time",
        ),
        (
            f"encode {name}, MB/s (Python engine)",
            f"{mb / t_py:.2f}",
            f"{mb / t_hf_enc:.2f}",
            f"{mb / t_tik:.2f}",
            f"{t_hf_enc / t_py:.2f}× HF's MB/s",
        ),
        (
            f"encode {name}, MB/s (tiktoken engine)",
            f"{mb / t_eng:.2f}",
            f"{mb / t_hf_enc:.2f}",
            f"{mb / t_tik:.2f}",
            f"{t_tik / t_eng:.2f}× tiktoken's MB/s",
        ),
        (
            f"bytes per token, {name} {vocab_size}",
            f"{bpt_lm:.4f}",
            f"{bpt_hf:.4f}",
            f"{bpt_tik:.4f}",
            f"{(bpt_lm / bpt_hf - 1) * 100:+.2f} % vs HF",
        ),
    ]


def bench_minbpe(chars: int, vocab_size: int, repeats: int) -> list[Row]:
    """minbpe's algorithm against lmforge (in-process, the function the CLI runs) on the first
    ``chars`` characters of Tiny Shakespeare; and minbpe's time for the full task (all of
    Tiny Shakespeare → 4096) estimated from its first merges."""
    from lmforge.data.corpora import resolve_corpus
    from lmforge.tokenizers import BPETokenizer, tokenizer_from_dict
    from lmforge.tokenizers.pretokenize import PATTERNS

    whole = resolve_corpus("tinyshakespeare").read()
    text = whole[:chars]
    regex_str = PATTERNS[PATTERN]
    start = time.perf_counter()
    merges = minbpe_train(text, vocab_size, regex_str)  # once: it is slow
    t_minbpe = time.perf_counter() - start
    t_ours = median_time(lambda: BPETokenizer.train(text, vocab_size, pattern=PATTERN), repeats)
    ours = BPETokenizer.train(text, vocab_size, pattern=PATTERN).to_dict()
    os.environ["LMFORGE_BPE_ENGINE"] = "python"
    t_minbpe_enc = median_time(lambda: minbpe_encode(text, merges, regex_str), repeats)
    t_ours_enc = median_cold(lambda: tokenizer_from_dict(ours), lambda t: t.encode(text), repeats)
    sample = 5
    start = time.perf_counter()
    minbpe_train(whole, 256 + sample, regex_str)
    estimate = (time.perf_counter() - start) / sample * (4096 - 256)
    kb = len(text.encode()) / 1e3
    return [
        (
            f"train {kb:.0f} KB of tinyshakespeare → {vocab_size} (in-process, s)",
            f"{t_ours:.3f}",
            "–",
            f"minbpe {t_minbpe:.2f}",
            f"{t_minbpe / t_ours:.0f}× faster than minbpe",
        ),
        (
            "minbpe, tinyshakespeare → 4096: first 5 merges × 3840 (s)",
            "–",
            "–",
            f"minbpe ≈ {estimate:.0f}",
            "compare with row 1",
        ),
        (
            f"encode {kb:.0f} KB of tinyshakespeare, MB/s (Python engine)",
            f"{kb / 1e3 / t_ours_enc:.2f}",
            "–",
            f"minbpe {kb / 1e3 / t_minbpe_enc:.2f}",
            f"{t_minbpe_enc / t_ours_enc:.1f}× minbpe's MB/s",
        ),
    ]


def print_table(rows: list[Row]) -> None:
    header = ("task", "lmforge", "HF tokenizers", "tiktoken (same merges) / minbpe", "ratio")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--minbpe-chars", type=int, default=100_000)
    parser.add_argument("--minbpe-vocab", type=int, default=512)
    parser.add_argument("--quick", action="store_true", help="tinyshakespeare only, 1 repeat")
    parser.add_argument("--big", action="store_true", help="also train on a 100 MB corpus")
    args = parser.parse_args()
    repeats = 1 if args.quick else args.repeats
    print(machine())
    print(f"repeats: {repeats} (medians), one thread; split pattern: {PATTERN}\n")
    work = Path(tempfile.mkdtemp(prefix="lmforge-tokbench-"))
    rows: list[Row] = []
    for name, split, vocab_size in TASKS[:1] if args.quick else TASKS:
        rows += bench_corpus(name, split, vocab_size, repeats, work)
    rows += bench_minbpe(args.minbpe_chars, args.minbpe_vocab, repeats)
    print_table(rows)
    if args.big:
        big_memory(work)


def big_memory(work: Path) -> None:
    """Train on a ~100 MB corpus (WikiText-2 and Tiny Shakespeare, repeated) in a child
    process and report its peak memory next to Hugging Face's."""
    from lmforge.data.corpora import resolve_corpus

    parts = [resolve_corpus("wikitext-2").read(s) for s in ("train", "val", "test")]
    parts.append(resolve_corpus("tinyshakespeare").read())
    block = "".join(parts)
    big = work / "big.txt"
    with open(big, "w", encoding="utf-8") as out:
        written = 0
        while written < 100_000_000:
            out.write(block)
            written += len(block.encode("utf-8"))
    print(f"\n100 MB corpus: {written / 1e6:.0f} MB ({big})")
    for label, cmd in (
        (
            "lmforge",
            [
                sys.executable,
                "-m",
                "lmforge",
                "tokenize",
                "train",
                "--vocab-size",
                "8192",
                "--pattern",
                PATTERN,
                str(big),
                "-o",
                str(work / "big.json"),
                "--quiet",
            ],
        ),
        (
            "HF tokenizers",
            [sys.executable, "-c", HF_TRAIN, str(big), "8192", str(work / "big-hf.json")],
        ),
    ):
        start = time.perf_counter()
        child = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _, status, usage = os.wait4(child.pid, 0)
        elapsed = time.perf_counter() - start
        assert status == 0, f"{label} failed"
        print(f"{label:>14}: {elapsed:.1f} s, peak memory {usage.ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
