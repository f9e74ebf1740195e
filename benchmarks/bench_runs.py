"""Helpers the training benchmarks share: the data folder, running `lmforge` commands, and
summing up a trained run from its metrics.

    from bench_runs import LMFORGE, run, summarize
    run([*LMFORGE, "train", "--model", "bigram", "--out", "runs/b", "--quiet"])
    summarize(Path("runs/b"))["tokens_per_s"]
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if "LMFORGE_DATA_DIR" not in os.environ and (REPO.parent / "shared" / "data").is_dir():
    os.environ["LMFORGE_DATA_DIR"] = str(REPO.parent / "shared" / "data")

LMFORGE = [sys.executable, "-m", "lmforge"]


def run(cmd: list[str]) -> str:
    """Run an lmforge command, echoing it; returns stdout."""
    print("$ " + shlex.join(cmd), flush=True)
    return subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=True).stdout


def summarize(out: Path) -> dict[str, Any]:
    """A trained run's steps, tokens seen, training seconds, tokens/s and parameters, from
    its last metrics record and its weights."""
    from lmforge.runs import load_run

    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    return {
        "steps": last["step"],
        "tokens": last["tokens"],
        "train_s": last["elapsed_s"],
        "tokens_per_s": last["tokens"] / max(last["elapsed_s"], 1e-9),
        "parameters": load_run(out, device="cpu").model.num_parameters(),
    }
