"""Scale benchmark (issue 8, "Prove it 1"): tokenizer training and training preparation on
100 MB, 500 MB and 2 GB corpora, for every tokenizer kind: MB/s and peak RSS.

The corpus is WikiText-2 (train) and Tiny Shakespeare, their lines shuffled afresh on every
pass and written again and again up to the size asked for, in a temporary directory (deleted
afterwards; ``--workdir`` to choose where). Every stage runs as a process of its own, and its
peak RSS is read from ``wait4`` (the largest of the process and the worker processes it ran):

- ``train``: ``python -m lmforge tokenize train --kind K CORPUS`` (BPE: ``--vocab-size 4096``);
- ``prepare``: ``encode_corpus`` (what ``lmforge train`` does before its first step: hash the
  corpus, cut train/val, encode both into memmaps, in worker processes);
- ``reuse``: ``encode_corpus`` again, which finds the cached token stream (it hashes the corpus).

    python benchmarks/scale.py                          # 100M 500M 2G x char word bpe
    python benchmarks/scale.py --sizes 100M --kinds bpe
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SOURCES = [("wikitext-2", "train.txt"), ("tinyshakespeare", "input.txt")]
PREPARE = """
import sys
from lmforge.data.corpora import resolve_corpus
from lmforge.data.stream import encode_corpus
from lmforge.tokenizers import load_tokenizer
stream = encode_corpus(resolve_corpus(sys.argv[1]), load_tokenizer(sys.argv[2]),
                       root=sys.argv[3], progress=False)
print(stream.num_tokens("train") + stream.num_tokens("val"))
"""


def parse_size(text: str) -> int:
    """``100M`` → 100,000,000 bytes; ``2G`` → 2,000,000,000."""
    units = {"K": 10**3, "M": 10**6, "G": 10**9}
    return int(float(text[:-1]) * units[text[-1].upper()]) if text[-1].isalpha() else int(text)


def source_lines(data_dir: Path) -> list[str]:
    lines: list[str] = []
    for corpus, filename in SOURCES:
        text = (data_dir / corpus / filename).read_text(encoding="utf-8")
        lines.extend(text.splitlines(keepends=True))
    return lines


def build_corpus(path: Path, size: int, lines: list[str], seed: int = 0) -> None:
    """Shuffled passes over ``lines`` until ``path`` holds at least ``size`` bytes."""
    rng = random.Random(seed)
    written = 0
    with open(path, "w", encoding="utf-8") as out:
        while written < size:
            rng.shuffle(lines)
            block = "".join(lines)
            out.write(block)
            written += len(block.encode("utf-8"))


def run_stage(command: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """Wall seconds, peak RSS in MB and stdout of one stage. The peak is ``wait4``'s
    ``ru_maxrss``: the largest of the process and the descendants it waited for (its workers)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        process = subprocess.Popen(command, env=env, stdout=out, stderr=err)
        _, status, usage = os.wait4(process.pid, 0)
        elapsed = time.perf_counter() - start
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if process.returncode != 0:
            raise SystemExit(f"{' '.join(command)} failed:\n{err.read().decode()[-2000:]}")
        return elapsed, usage.ru_maxrss / 1024, out.read().decode().strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["100M", "500M", "2G"])
    parser.add_argument("--kinds", nargs="+", default=["char", "word", "bpe"])
    parser.add_argument("--vocab-size", type=int, default=4096, help="BPE vocabulary size")
    parser.add_argument("--workdir", help="where the corpora go (default: a temporary directory)")
    parser.add_argument(
        "--data-dir",
        default=os.environ.get("LMFORGE_DATA_DIR", str(REPO.parent / "shared" / "data")),
    )
    args = parser.parse_args()
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), LMFORGE_DATA_DIR=args.data_dir)
    lines = source_lines(Path(args.data_dir))
    print(
        f"# {platform.node()}: {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"load average {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    print("| corpus | kind | stage | seconds | MB/s | peak RSS (MB) | note |", flush=True)
    print("|---|---|---|---|---|---|---|", flush=True)
    workdir = (
        Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="lmforge-scale-"))
    )
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        for size_text in args.sizes:
            corpus = workdir / f"corpus-{size_text}.txt"
            build_corpus(corpus, parse_size(size_text), lines)
            megabytes = corpus.stat().st_size / 1e6
            for kind in args.kinds:
                env["LMFORGE_CACHE_DIR"] = str(workdir / "cache")
                tok = workdir / f"tok-{kind}.json"
                train = [sys.executable, "-m", "lmforge", "tokenize", "train", "--kind", kind]
                if kind == "bpe":
                    train += ["--vocab-size", str(args.vocab_size)]
                train += [str(corpus), "-o", str(tok), "--quiet"]
                prepare = [sys.executable, "-c", PREPARE, str(corpus), str(tok)]
                prepare.append(str(workdir / "tokens"))
                for stage, command in (("train", train), ("prepare", prepare), ("reuse", prepare)):
                    seconds, peak, out = run_stage(command, env)
                    note = f"{int(out):,} tokens" if stage == "prepare" else ""
                    print(
                        f"| {size_text} ({megabytes:,.0f} MB) | {kind} | {stage} | {seconds:,.1f} "
                        f"| {megabytes / seconds:,.1f} | {peak:,.0f} | {note} |",
                        flush=True,
                    )
                shutil.rmtree(workdir / "tokens", ignore_errors=True)
            corpus.unlink()
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
