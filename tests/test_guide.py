"""docs/guide.md stays true: every command it shows runs, and every picture it links exists.

Convention of the guide: commands a reader pastes are in ```console blocks, one per line
starting with ``$ `` (a trailing ``\\`` continues it on the next line); other lines there are
their recorded output. ```python blocks are run as they stand. Everything runs in order in
one temporary directory, so a later command may use what an earlier one wrote (a run, a
tokenizer file).

Each command runs in this process through :func:`lmforge.cli.main` (the CLI's whole entry
point: parsing, the command and its error handling), which spares a fresh interpreter and
torch import per command. Budgets are cut to a few steps and the named corpora are replaced
by short copies of their files: named corpora are checked against their registered sha256,
so the copies are passed as paths instead of through ``LMFORGE_DATA_DIR``.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest

from lmforge.cli import main
from lmforge.data.corpora import resolve_corpus

REPO = Path(__file__).resolve().parent.parent
GUIDE = REPO / "docs" / "guide.md"

FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)
IMAGE_LINK = re.compile(r"!\[[^\]]*\]\(([^)\s]+)\)")

# Characters kept from each split of a named corpus: enough for every tokenizer and model
# of the guide to train for a few steps, little enough to keep the test fast.
SHORT_CORPUS_CHARS = 40_000
TINY_FLAGS = {
    "--time-budget": None,  # replaced by --max-steps
    "--max-steps": "2",
    "--eval-iters": "1",
    "--batch-size": "4",
    "--length": "12",
    "--num-samples": "1",
    "--vocab-size": "300",
}


@dataclass(frozen=True)
class GuideCommand:
    """One runnable thing from the guide: an ``lmforge`` command line or a Python block."""

    kind: str  # "console" or "python"
    text: str


def guide_commands(markdown: str) -> list[GuideCommand]:
    """The guide's commands in order.

    >>> guide_commands("```console\\n$ lmforge a \\\\\\n    --b\\nout\\n```\\n")
    [GuideCommand(kind='console', text='lmforge a --b')]
    """
    commands = []
    for language, body in FENCE.findall(markdown):
        if language == "python":
            commands.append(GuideCommand("python", body))
        elif language == "console":
            lines = iter(body.splitlines())
            for line in lines:
                if not line.startswith("$ "):
                    continue
                command = line[2:]
                while command.endswith("\\"):
                    command = command[:-1].rstrip() + " " + next(lines).strip()
                commands.append(GuideCommand("console", command))
    return commands


def shrink(argv: list[str], short_corpora: dict[str, str]) -> list[str]:
    """The same command with a tiny budget and short corpora.

    >>> shrink(["train", "--corpus", "wikitext-2", "--time-budget", "600"], {"wikitext-2": "c"})
    ['train', '--corpus', 'c', '--max-steps', '2', '--eval-iters', '1', '--batch-size', '4']
    """
    out: list[str] = []
    args = iter(argv)
    for arg in args:
        if arg in TINY_FLAGS:
            next(args)
            if TINY_FLAGS[arg] is not None:
                out += [arg, TINY_FLAGS[arg]]
        else:
            out.append(short_corpora.get(arg, arg))
    if out[0] == "train":
        for flag in ("--max-steps", "--eval-iters", "--batch-size"):
            if flag not in out:
                out += [flag, TINY_FLAGS[flag]]
    return out


def short_copies(names: set[str], where: Path) -> dict[str, str]:
    """Short copies of the named corpora's split files, as corpus directories under ``where``."""
    copies = {}
    for name in sorted(names):
        corpus = resolve_corpus(name)
        folder = where / name
        folder.mkdir(parents=True)
        for split, files in corpus.splits.items():
            target = {"train": "train.txt", "val": "valid.txt", "test": "test.txt"}[split]
            text = files[0].read_text(encoding="utf-8")
            short = text[:SHORT_CORPUS_CHARS]
            if split == "train":  # every character of the corpus stays in the vocabulary
                short += "\n" + "".join(sorted(set(text))) + "\n"
            (folder / target).write_text(short, encoding="utf-8")
        copies[name] = str(folder)
    return copies


def test_guide_commands_parse_into_lmforge_commands():
    commands = guide_commands(GUIDE.read_text(encoding="utf-8"))
    console = [c.text for c in commands if c.kind == "console"]
    assert len(console) >= 20
    assert all(c.startswith("lmforge ") for c in console), "console blocks hold lmforge only"


def test_no_lmforge_command_hides_outside_console_blocks():
    """Commands in ```bash or unlabelled blocks are not run by this test, so none may be
    an lmforge command (the GPU script, which needs a GPU, is the kind that belongs there)."""
    for language, body in FENCE.findall(GUIDE.read_text(encoding="utf-8")):
        if language in ("console", "python"):
            continue
        for line in body.splitlines():
            assert not line.lstrip("$ ").startswith("lmforge "), (language, line)


def test_every_linked_picture_exists():
    links = IMAGE_LINK.findall(GUIDE.read_text(encoding="utf-8"))
    assert links, "the guide links its pictures"
    missing = [link for link in links if not (GUIDE.parent / link).is_file()]
    assert not missing


def test_every_command_of_the_guide_runs(tmp_path, monkeypatch, capsys):
    commands = guide_commands(GUIDE.read_text(encoding="utf-8"))
    named = {"tinyshakespeare", "wikitext-2"}
    used = {arg for c in commands if c.kind == "console" for arg in shlex.split(c.text)}
    short_corpora = short_copies(named & used, tmp_path / "data")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    for command in commands:
        if command.kind == "python":
            exec(compile(command.text, "docs/guide.md", "exec"), {})
            continue
        argv = shrink(shlex.split(command.text)[1:], short_corpora)
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse's way out, e.g. for a flag that no longer exists
            code = exc.code
        if code != 0:
            last_lines = capsys.readouterr().err.strip().splitlines()[-3:]
            pytest.fail(f"`{command.text}` exited {code}: " + " | ".join(last_lines))
