"""Mutation testing of the core modules with mutmut 3 (a dev tool: not part of CI).

Runs ``mutmut run`` over one module group after another (its settings are ``[tool.mutmut]`` in
pyproject.toml: which files to mutate and which tests to run), then prints per module how many
mutants the tests killed, how many survived, and the score. Results are kept in ``mutants/``:
a full run (no ``--group``, no ``--sample``) skips the mutants already decided, while a group or
the sample is run again whole; ``--report`` prints the table from the kept results.

    pip install mutmut==3.8.1
    python benchmarks/mutation.py                              # every group, in full
    python benchmarks/mutation.py --sample --max-children 2    # the sample in docs/reliability.md
    python benchmarks/mutation.py --group losses --group evaluation
    python benchmarks/mutation.py --report --survivors         # the table and the survivors
    mutmut show lmforge.generation.x__overlap__mutmut_4        # what one mutant changed

See "Mutation testing" in docs/reliability.md for the scores and what the survivors are.
"""

from __future__ import annotations

import argparse
import fnmatch
import importlib.util
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# Mutant names are module.x_function__mutmut_N (methods: module.xǁClassǁmethod__mutmut_N).
GROUPS = {
    "generation": ["lmforge.generation.*"],
    "evaluation": ["lmforge.evaluation.*"],
    "losses": ["lmforge.losses.*"],
    "tokenizers": ["lmforge.tokenizers.*"],
    "training": ["lmforge.training.*"],
}
# A sample of the two big groups (their full runs take hours on two cores): whole modules where
# they are small, and the functions that carry the numbers elsewhere.
SAMPLE = {
    **GROUPS,
    "tokenizers": [
        "lmforge.tokenizers.base.*",
        "lmforge.tokenizers.char.*",
        "lmforge.tokenizers.word.*",
        "lmforge.tokenizers.pretokenize.*",
        "lmforge.tokenizers.bpe.x_learn_merges__*",
        "lmforge.tokenizers.bpe.x__merge_long__*",
        "lmforge.tokenizers.bpe.xǁBPETokenizerǁmerge_bytes__*",
        "lmforge.tokenizers.bpe.xǁBPETokenizerǁdecode_bytes__*",
    ],
    "training": [
        "lmforge.training.schedule.*",
        "lmforge.training.checkpoint.*",
        "lmforge.training.trainer.x_make_optimizer__*",
        "lmforge.training.trainer.x_fixed_batches__*",
        "lmforge.training.trainer.xǁTrainerǁ_train_step__*",
        "lmforge.training.trainer.xǁTrainerǁ_mean_loss__*",
        "lmforge.training.trainer.xǁTrainerǁ_check_finite__*",
    ],
}
# mutmut's exit codes of a mutant's test run, by what they mean here.
KILLED = {1, 3, 36, 37, -24, 24, 152, 255}  # tests failed, crashed, timed out or type check
SURVIVED = {0}
NO_TESTS = {5, 33}
NOT_RUN = {None, 2, 34}  # not checked yet, interrupted, skipped


def mutant_results(mutants_dir: Path) -> dict[str, int | None]:
    """Every mutant's exit code from mutmut's result files (None: not run yet)."""
    results: dict[str, int | None] = {}
    for meta in sorted((mutants_dir / "src").rglob("*.py.meta")):
        results.update(json.loads(meta.read_text(encoding="utf-8"))["exit_code_by_key"])
    return results


def selected(name: str, patterns: list[str]) -> bool:
    """Whether the mutant ``name`` matches one of the glob ``patterns``."""
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def module_of(name: str) -> str:
    """lmforge.tokenizers.bpe.x_learn_merges__mutmut_3 -> lmforge.tokenizers.bpe."""
    return name.rsplit(".", 1)[0]


def summary(results: dict[str, int | None], patterns: list[str]) -> list[tuple[str, Counter]]:
    """(module, counts of killed/survived/no tests) for the mutants that ran, module by module."""
    by_module: dict[str, Counter] = {}
    for name, code in results.items():
        if not selected(name, patterns) or code in NOT_RUN:
            continue
        if code in KILLED:
            status = "killed"
        elif code in SURVIVED:
            status = "survived"
        elif code in NO_TESTS:
            status = "no tests"
        else:
            status = "suspicious"
        by_module.setdefault(module_of(name), Counter())[status] += 1
    return sorted(by_module.items())


def print_table(rows: list[tuple[str, Counter]]) -> None:
    """Killed, survived (with 'no tests' and 'suspicious' ones) and the score per module."""
    header = ("module", "mutants", "killed", "survived", "no tests", "score")
    print("{:36} {:>8} {:>7} {:>9} {:>9} {:>7}".format(*header))
    total: Counter = Counter()
    for module, counts in [*rows, ("total", total)]:
        if module != "total":
            total.update(counts)
        n = sum(counts.values())
        survived = counts["survived"] + counts["suspicious"]
        score = f"{100 * counts['killed'] / n:.1f}%" if n else "-"
        print(
            f"{module:36} {n:8} {counts['killed']:7} {survived:9} {counts['no tests']:9} {score:>7}"
        )


def run_mutmut(patterns: list[str], max_children: int) -> int:
    """``mutmut run`` on the mutants matching ``patterns``, one thread per test process."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    shared = REPO.parent / "shared" / "data"
    # the tests run inside mutants/, where tests/conftest.py cannot find ../shared/data
    if "LMFORGE_DATA_DIR" not in env and shared.is_dir():
        env["LMFORGE_DATA_DIR"] = str(shared)
    command = [sys.executable, "-m", "mutmut", "run", "--max-children", str(max_children)]
    return subprocess.call(command + patterns, cwd=REPO, env=env)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--group", action="append", choices=sorted(GROUPS), help="default: all")
    parser.add_argument("--sample", action="store_true", help="the sample, not every mutant")
    parser.add_argument("--max-children", type=int, default=1, help="parallel test processes")
    parser.add_argument("--report", action="store_true", help="only print the last results")
    parser.add_argument("--survivors", action="store_true", help="also list surviving mutants")
    args = parser.parse_args(argv)
    groups = SAMPLE if args.sample else GROUPS
    patterns = [p for g in args.group or sorted(groups) for p in groups[g]]
    if not args.report:
        if importlib.util.find_spec("mutmut") is None:
            print("mutmut is not installed: pip install mutmut==3.8.1", file=sys.stderr)
            return 2
        # Without names mutmut skips the mutants it has already decided; named mutants (a group,
        # the sample) are all run again.
        runs = {"all": []} if not (args.group or args.sample) else groups
        for group in args.group or list(runs):
            print(f"== mutmut: {group}", flush=True)
            if run_mutmut(runs[group], args.max_children) != 0:
                print(f"mutmut failed on {group}", file=sys.stderr)
                return 1
    results = mutant_results(REPO / "mutants")
    print_table(summary(results, patterns))
    if args.survivors:
        for name, code in sorted(results.items()):
            if selected(name, patterns) and code not in KILLED | NOT_RUN:
                print("survived:", name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
