"""The `tiny` preset against the Llama-style `llama` preset on Tiny Shakespeare (characters, the
last 10 % held out): each trains on the CPU for the same time budget, one after the other in
this one run, and is then scored on the whole validation split with `lmforge eval`.

    python benchmarks/presets.py                         # 600 s each, as BENCHMARKS.md records
    python benchmarks/presets.py --time-budget 60 --presets llama

Each row prints the exact command it ran. Runs go to runs/bench-preset-<name> (replaced).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from bench_runs import LMFORGE, run, summarize

COMMON = ["--corpus", "tinyshakespeare", "--tokenizer", "char", "--device", "cpu"]


def train_and_score(preset: str, budget: float, runs: Path) -> dict[str, float]:
    """Train ``preset`` for ``budget`` seconds; its steps, tokens/s, parameters and val loss."""
    out = runs / f"bench-preset-{preset}"
    flags = ["--model", "transformer", "--preset", preset, "--time-budget", str(budget)]
    run([*LMFORGE, "train", *COMMON, *flags, "--out", str(out), "--overwrite", "--quiet"])
    val_loss = json.loads(run([*LMFORGE, "eval", str(out), "--json"]))["loss"]
    return {**summarize(out), "val_loss": val_loss}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--time-budget", type=float, default=600.0, help="seconds per preset")
    parser.add_argument("--presets", nargs="+", default=["tiny", "llama"])
    parser.add_argument("--runs", type=Path, default=Path("runs"), help="where the runs go")
    args = parser.parse_args()
    results = {name: train_and_score(name, args.time_budget, args.runs) for name in args.presets}
    print(f"\nTiny Shakespeare, characters, --time-budget {args.time_budget:g} s each, CPU")
    print(
        f"{'preset':<8} {'params':>9} {'steps':>6} {'train s':>8} {'tokens/s':>9} {'val loss':>9}"
    )
    for name, r in results.items():
        print(
            f"{name:<8} {r['parameters']:>9,} {r['steps']:>6} {r['train_s']:>8.0f} "
            f"{r['tokens_per_s']:>9,.0f} {r['val_loss']:>9.4f}  ({r['val_loss'] / math.log(2):.3f} "
            "bits/char)"
        )


if __name__ == "__main__":
    main()
