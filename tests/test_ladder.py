"""benchmarks/ladder.py: its commands parse with lmforge's own parser, its rows merge across
invocations, its tables render exactly, and its marker replacement is exact and idempotent."""

from __future__ import annotations

import math
import shlex
import sys
from pathlib import Path

import pytest
import torch

from lmforge.cli import build_parser
from lmforge.config import resolve_config
from lmforge.errors import LmforgeError
from lmforge.train_flags import ALL_TRAIN_FLAGS, nested_options

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import ladder


def row(corpus: str, family: str, budget: float = 600, loss: float = 1.5, **extra) -> dict:
    """A results-file row with round numbers."""
    score = ladder.split_score(loss, predictions=1000, chars=4000)
    return {
        "corpus": corpus,
        "family": family,
        "flags": f"--model {family}",
        "parameters": 12345,
        "steps": 900,
        "tokens": 7372800,
        "train_s": 599.6,
        "tokens_per_s": 12296.2,
        "val": score,
        "budget": budget,
        **extra,
    }


def dry_run(capsys: pytest.CaptureFixture[str], monkeypatch, *argv: str) -> list[list[str]]:
    monkeypatch.setattr(sys, "argv", ["ladder.py", "--dry-run", *argv])
    ladder.main()
    return [shlex.split(line) for line in capsys.readouterr().out.splitlines()]


def test_dry_run_prints_21_train_commands_that_lmforge_parses(capsys, monkeypatch) -> None:
    commands = dry_run(capsys, monkeypatch)
    parser = build_parser()
    trains = [c for c in commands if c[3] == "train"]
    assert len(trains) == 21
    assert [c[3:5] for c in commands if c[3] != "train"] == [["tokenize", "train"]]
    tokenizer_file = parser.parse_args(commands[0][3:]).output
    for command in commands:
        args = parser.parse_args(command[3:])  # exits on a renamed or unknown flag
        if command[3] == "train":
            config = resolve_config({**nested_options(args, ALL_TRAIN_FLAGS), "out": args.out})
            assert config.train.time_budget == 600 and config.train.max_steps is None
    kinds = {
        resolve_config(
            {**nested_options(parser.parse_args(c[3:]), ALL_TRAIN_FLAGS), "out": "x"}
        ).tokenizer.kind
        for c in trains
    }
    assert kinds == {"char", "word", "bpe"}
    bpe_runs = [c for c in trains if "wikitext-2-bpe" in c[c.index("--out") + 1]]
    assert len(bpe_runs) == 7
    assert all(c[c.index("--tokenizer-file") + 1] == tokenizer_file for c in bpe_runs)


def test_dry_run_of_the_preset_and_the_peer(capsys, monkeypatch) -> None:
    commands = dry_run(
        capsys,
        monkeypatch,
        "--corpora",
        "tinyshakespeare",
        "wikitext-2-word",
        "--families",
        "lstm-wt2",
        "--time-budget",
        "60",
        "--peer",
    )
    (preset, peer) = commands  # the preset applies to the word-level corpus only
    args = build_parser().parse_args(preset[3:])
    config = resolve_config({**nested_options(args, ALL_TRAIN_FLAGS), "out": "x"})
    assert (config.model["family"], config.tokenizer.word_split) == ("lstm", "whitespace")
    assert config.train.time_budget == 60
    assert peer[1].endswith("word_lm_example.py") and peer[2:4] == ["--time-budget", "60"]


def test_rows_of_two_invocations_merge() -> None:
    first = ladder.merge_rows({}, [row("tinyshakespeare", "bigram"), row("tinyshakespeare", "gru")])
    second = ladder.merge_rows(first, [row("tinyshakespeare", "gru", loss=1.4), row("x", "lstm")])
    assert list(second) == ["tinyshakespeare/bigram", "tinyshakespeare/gru", "x/lstm"]
    assert second["tinyshakespeare/gru"]["val"]["loss"] == 1.4
    assert second["tinyshakespeare/bigram"] == first["tinyshakespeare/bigram"]


def test_the_preset_and_the_peer_keep_a_row_per_budget() -> None:
    rows = [
        row("wikitext-2-word", f, budget=b) for f in ("lstm-wt2", ladder.PEER) for b in (600, 3600)
    ]
    merged = ladder.merge_rows({}, [*rows, row("wikitext-2-word", "lstm", budget=3600)])
    merged = ladder.merge_rows(merged, [row("wikitext-2-word", "lstm", budget=600)])
    assert sorted(merged) == [
        "wikitext-2-word/lstm",
        "wikitext-2-word/lstm-wt2@3600s",
        "wikitext-2-word/lstm-wt2@600s",
        f"wikitext-2-word/{ladder.PEER}@3600s",
        f"wikitext-2-word/{ladder.PEER}@600s",
    ]
    table = ladder.render_tables(merged, 600, "img")
    assert table.index("| lstm-wt2 |") < table.index("| lstm-wt2 (3600 s budget)")
    assert table.index("| lstm-wt2 (3600 s") < table.index(f"| {ladder.PEER} |")


def test_results_file_round_trip_and_a_broken_file(tmp_path: Path) -> None:
    path = tmp_path / "results" / "ladder.json"
    assert ladder.load_results(path) == {}
    rows = ladder.merge_rows({}, [row("tinyshakespeare", "lstm")])
    ladder.save_results(rows, path)
    assert ladder.load_results(path) == rows
    path.write_text("{not json")
    with pytest.raises(LmforgeError, match=r"ladder\.json is not valid JSON"):
        ladder.load_results(path)


def test_bits_per_char_is_total_nats_over_characters() -> None:
    score = ladder.split_score(2.0, predictions=9, chars=40)
    assert score["bits_per_char"] == pytest.approx(2.0 * 9 / 40 / math.log(2))
    assert score["perplexity"] == pytest.approx(math.exp(2.0))


def test_table_rows_are_exact_and_label_another_budget() -> None:
    test = ladder.split_score(1.25, predictions=1000, chars=5000)
    rows = ladder.merge_rows(
        {},
        [
            row("wikitext-2-word", ladder.PEER),
            row("wikitext-2-word", "lstm", budget=300, test=test),
            row("tinyshakespeare", "bigram", loss=2.5),
        ],
    )
    text = ladder.render_tables(rows, 600, "docs/img")
    lines = text.splitlines()
    assert (
        "| bigram | `--model bigram` | 12,345 | 900 | 7,372,800 | 600 s | 12,296 | 2.5000 | "
        f"12.18 | – | – | {2.5 * 1000 / 4000 / math.log(2):.3f} |"
    ) in lines
    assert (
        "| lstm (300 s budget) | `--model lstm` | 12,345 | 900 | 7,372,800 | 600 s | 12,296 | "
        f"1.5000 | 4.48 | 1.2500 | 3.49 | {1.25 / 5 / math.log(2):.3f} |"
    ) in lines
    # ladder order: Tiny Shakespeare first; in a table, the families before the peer
    assert text.index("| bigram") < text.index("| lstm (300") < text.index(f"| {ladder.PEER}")
    assert "![validation loss against wall time](docs/img/ladder-wikitext-2-word.png)" in lines
    assert "ladder-wikitext-2-bpe.png" not in text  # no rows, no table, no picture
    assert "Measured ? on ?, commit ?." in lines  # rows without provenance say so
    assert text.count("Published, not measured here") == 2
    assert "test perplexity 65.8 (val 68.6)" in text and "val loss 1.4697" in text


def test_marker_replacement_is_exact_and_idempotent() -> None:
    doc = "# B\n\nbefore\n<!-- ladder:begin -->\nold\ntable\n<!-- ladder:end -->\nafter\n"
    once = ladder.replace_between_markers(doc, "| new |")
    assert once == "# B\n\nbefore\n<!-- ladder:begin -->\n| new |\n<!-- ladder:end -->\nafter\n"
    assert ladder.replace_between_markers(once, "| new |") == once


@pytest.mark.parametrize(
    "doc",
    ["no markers", "<!-- ladder:begin --> only", "<!-- ladder:end --> x <!-- ladder:begin -->"],
)
def test_missing_marker_is_a_clear_error(doc: str) -> None:
    with pytest.raises(LmforgeError, match=r"guide.md has no <!-- ladder:begin --> \.\.\. <!--"):
        ladder.replace_between_markers(doc, "x", "guide.md")


def test_benchmarks_md_has_the_markers() -> None:
    text = (Path(ladder.REPO) / "BENCHMARKS.md").read_text(encoding="utf-8")
    assert ladder.replace_between_markers(text, "x") != text
    assert "## The ladder on three corpora (issue 11)" in text


def test_the_peer_builds_its_vocabulary_and_columns_as_the_example() -> None:
    import word_lm_example as peer

    texts = [" = A = \n\n a b \n", " b c \n"]  # WikiText lines: spaces around, empty lines
    vocab = peer.build_vocabulary(texts)
    assert vocab == {"=": 0, "A": 1, "<eos>": 2, "a": 3, "b": 4, "c": 5}
    assert peer.encode(texts[0], vocab).tolist() == [0, 1, 0, 2, 2, 3, 4, 2]
    data = peer.batchify(torch.arange(11), 2)  # two sequential rows, the remainder dropped
    assert data.tolist() == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]
    pieces = peer.bptt_batches(data, 3)
    assert [(x.tolist(), y.tolist()) for x, y in pieces] == [
        ([[0, 1, 2], [5, 6, 7]], [[1, 2, 3], [6, 7, 8]]),
        ([[3], [8]], [[4], [9]]),
    ]


def test_the_peer_row_renders_in_the_word_level_table(tmp_path: Path, monkeypatch, capsys) -> None:
    import json

    import word_lm_example as peer

    folder = tmp_path / "wikitext-2"
    folder.mkdir()
    for name in ("train", "valid", "test"):
        (folder / f"{name}.txt").write_text(" = T = \n the cat sat \n the dog ran \n" * 3)
    argv = ["word_lm_example.py", "--corpus", str(folder), "--batch-size", "2", "--json"]
    argv += ["--time-budget", "0.5"]
    monkeypatch.setattr(sys, "argv", argv)
    peer.main()
    result = json.loads(capsys.readouterr().out)
    assert result["vocab_size"] == 8 and result["steps"] >= 1
    chars = len(" = T = \n the cat sat \n the dog ran \n" * 3)
    assert result["test"]["chars"] == chars
    # 36 tokens in 10 columns of 3: 2 predictions each
    assert result["test"]["predictions"] == 20
    table = ladder.render_tables(ladder.merge_rows({}, [{**result, "budget": 0.5}]), 0.5, "img")
    assert f"| {ladder.PEER} | `benchmarks/word_lm_example.py` |" in table


def test_every_word_level_row_fits_in_the_machines_memory(capsys, monkeypatch) -> None:
    """With its family's defaults a 33,278-word bigram needs 26.4 GB (and the context model's
    table 18.8 GB); the word-level rows' flags keep every row under 20 GB of the 23 GB machine."""
    from lmforge.models.base import build_model
    from lmforge.training.memory import training_memory

    parser = build_parser()
    for command in dry_run(capsys, monkeypatch, "--corpora", "wikitext-2-word"):
        args = parser.parse_args(command[3:])
        config = resolve_config({**nested_options(args, ALL_TRAIN_FLAGS), "out": "x"})
        with torch.device("meta"):
            model = build_model(vocab_size=33278, **config.model)
        assert training_memory(model, config.train).total < 20e9, command
