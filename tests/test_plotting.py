"""`lmforge plot`: token classes, cosine neighbours, the embedding map and the bigram heat-map."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from lmforge.cli import main
from lmforge.data.corpora import resolve_corpus
from lmforge.data.stream import split_texts
from lmforge.embedding_map import (
    cosine_neighbours,
    default_queries,
    find_tokens,
    neighbours_table,
    next_token_probabilities,
    printable,
)
from lmforge.errors import ConfigError
from lmforge.plotting import most_frequent, train_token_counts
from lmforge.runs import load_run, read_run_config
from lmforge.token_classes import char_class, piece_class, token_classes, word_class

TINY_SHAKESPEARE_CHARS = "\n !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def test_character_classes():
    expected = {
        "a": "vowel",
        "u": "vowel",
        "y": "consonant",
        "t": "consonant",
        "E": "capital vowel",
        "T": "capital consonant",
        "3": "digit",
        ".": "punctuation",
        "'": "punctuation",
        "$": "punctuation",
        "&": "punctuation",
        " ": "whitespace",
        "\n": "whitespace",
        "é": "vowel",
        "<unk>": "other",
        "\x00": "other",
    }
    assert {c: char_class(c) for c in expected} == expected
    counts = Counter(token_classes(list(TINY_SHAKESPEARE_CHARS), "char")[0])
    assert counts == {
        "vowel": 5,
        "consonant": 21,
        "capital vowel": 5,
        "capital consonant": 21,
        "digit": 1,
        "punctuation": 10,
        "whitespace": 2,
    }


def test_word_classes():
    expected = {
        "the": "determiner",
        "The": "determiner",
        "their": "determiner",
        "that": "determiner",
        "he": "pronoun",
        "them": "pronoun",
        "of": "preposition",
        "for": "preposition",
        "and": "conjunction",
        "as": "conjunction",
        "was": "auxiliary / modal",
        "would": "auxiliary / modal",
        "1914": "number",
        "3.5": "number",
        "1,000": "number",
        "two": "number",
        ",": "punctuation",
        "@-@": "punctuation",
        "\n": "punctuation",
        "king": "other",
        "'s": "other",
        "<unk>": "other",
    }
    assert {w: word_class(w) for w in expected} == expected


def test_bpe_piece_classes():
    expected = {
        " the": "word start",
        "ing": "word piece",
        " 19": "number",
        "42": "number",
        ".": "punctuation",
        " (": "punctuation",
        ":\n\n": "punctuation",
        "\n\n": "whitespace",
        " ": "whitespace",
        "'s": "other",
        "\\xe2": "other",
    }
    assert {t: piece_class(t) for t in expected} == expected
    assert token_classes([" a", "b"], "hf")[0] == ["word start", "word piece"]


def test_cosine_neighbours_on_a_hand_built_table():
    weight = np.array(
        [
            [1.0, 0.0],  # 0
            [0.6, 0.8],  # 1: cos 0.6 with row 0
            [3.0, 4.0],  # 2: the same direction as row 1, longer
            [0.0, -2.0],  # 3: cos 0 with row 0, -0.8 with row 1
            [-1.0, 0.0],  # 4: opposite row 0
            [0.0, 0.0],  # 5: no direction
        ]
    )
    assert cosine_neighbours(weight, 0, k=5) == [(1, 0.6), (2, 0.6), (3, 0.0), (5, 0.0), (4, -1.0)]
    assert cosine_neighbours(weight, 1, k=3) == [(2, 1.0), (0, 0.6), (5, 0.0)]
    assert cosine_neighbours(weight, 3, k=3) == [(0, 0.0), (4, 0.0), (5, 0.0)]
    assert cosine_neighbours(weight, 5, k=2) == [(0, 0.0), (1, 0.0)]
    table = neighbours_table(weight, ["a", " b", "\n", "|", "`", "z"], [1, 3], k=2)
    assert table.splitlines() == [
        "| token | 1 | 2 |",
        "|---|---|---|",
        "| `␣b` | `\\n` 1.000 | `a` 0.600 |",
        "| `\\|` | `a` 0.000 | `` ` `` 0.000 |",
    ]


def test_tokens_are_found_as_spelled_or_as_shown():
    tokens = ["a", "\n", " the", "e"]
    assert printable(" the\n") == "␣the\\n"
    # control characters (byte-level vocabularies have them) have no glyph: escaped
    assert printable("\x00a\x1b\x7f\x85é") == "\\x00a\\x1b\\x7f\\x85é"
    assert find_tokens(tokens, ["e", "\\n", "\n", "␣the", " the"]) == [3, 1, 1, 2, 2]
    with pytest.raises(ConfigError, match=r"'king', 'zz' not in the run's vocabulary of 4 tokens"):
        find_tokens(tokens, ["a", "king", "zz"])
    assert default_queries(tokens, "char", [3, 0, 1, 2]) == [0, 3, 1]  # a, e, \n
    # too few defaults: the most frequent tokens fill up to three
    assert default_queries(["a", "x", "y", "z"], "char", [3, 0, 1, 2]) == [0, 3, 1]
    assert default_queries(["x", "the", "y"], "word", [2, 0, 1]) == [1, 2, 0]


def test_the_map_of_a_large_vocabulary_keeps_the_most_frequent_tokens():
    counts = np.array([5, 9, 0, 9, 7, 1])
    assert most_frequent(counts, 6, 3) == ([1, 3, 4], "the 3 most frequent of 6 tokens")
    assert most_frequent(counts, 6, 6) == ([0, 1, 2, 3, 4, 5], "all 6 tokens")
    assert most_frequent(None, 6, 2) == (
        [0, 1],
        "the first 2 of 6 tokens in vocabulary order (no token counts: the run's token cache "
        "is gone)",
    )


def _train(corpus, out, *model):
    args = ["train", "--corpus", str(corpus), "--out", str(out), *model]
    args += ["--batch-size", "8", "--block-size", "16", "--max-steps", "4"]
    args += ["--eval-interval", "4", "--eval-iters", "1", "--device", "cpu", "--quiet"]
    assert main(args) == 0


LSTM = ["--model", "lstm", "--n-embd", "8", "--n-hidden", "16", "--n-layer", "1"]


@pytest.fixture
def char_corpus(tmp_path):
    path = tmp_path / "chars.txt"
    path.write_text("First Citizen:\nBefore we proceed any further, hear me speak.\n" * 40)
    return path


def _png(path):
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG") and len(data) > 10_000
    return data


def test_plot_a_char_run_writes_the_map_and_the_neighbours(char_corpus, tmp_path, capsys):
    _train(char_corpus, tmp_path / "lstm", *LSTM)
    capsys.readouterr()
    assert main(["plot", str(tmp_path / "lstm"), "--out", str(tmp_path / "pics")]) == 0
    out = capsys.readouterr().out
    table, paths = out.split("\n\n")
    assert paths.split() == [str(tmp_path / "pics" / n) for n in PICTURES]
    for name in ("loss.png", "embeddings.png"):
        _png(tmp_path / "pics" / name)
    assert not (tmp_path / "pics" / "bigram.png").exists()
    assert (tmp_path / "pics" / "neighbours.txt").read_text() == table + "\n"
    rows = table.splitlines()
    assert rows[:2] == ["| token | 1 | 2 | 3 | 4 | 5 |", "|---|---|---|---|---|---|"]
    # the defaults that the vocabulary has (it has no A, 1)
    assert [row.split(" | ")[0] for row in rows[2:]] == [
        "| `a`",
        "| `e`",
        "| `t`",
        "| `.`",
        "| `\\n`",
    ]
    run = load_run(tmp_path / "lstm", device="cpu")
    weight = run.model.embedding_weight().detach().numpy()
    a = run.tokenizer.encode("a")[0]
    first, similarity = cosine_neighbours(weight, a, k=1)[0]
    assert (
        rows[2].split(" | ")[1]
        == f"`{printable(run.tokenizer.id_to_token(first))}` {similarity:.3f}"
    )

    assert main(["plot", str(tmp_path / "lstm"), "--neighbours", "␣", "F"]) == 0
    rows = capsys.readouterr().out.split("\n\n")[0].splitlines()
    assert [row.split(" | ")[0] for row in rows[2:]] == ["| `␣`", "| `F`"]


PICTURES = ("loss.png", "embeddings.png", "neighbours.txt")


def test_a_run_without_metrics_gets_every_picture_but_the_losses(char_corpus, tmp_path, capsys):
    _train(char_corpus, tmp_path / "lstm", *LSTM)
    (tmp_path / "lstm" / "metrics.jsonl").unlink()
    capsys.readouterr()
    assert main(["plot", str(tmp_path / "lstm")]) == 0
    captured = capsys.readouterr()
    paths = captured.out.split("\n\n")[1].split()
    assert paths == [str(tmp_path / "lstm" / n) for n in PICTURES[1:]]
    assert captured.err == (
        f"lmforge: no training metrics in {tmp_path / 'lstm'} (a run with no records yet): "
        "loss.png not drawn\n"
    )
    assert not (tmp_path / "lstm" / "loss.png").exists()
    _png(tmp_path / "lstm" / "embeddings.png")


def test_an_unknown_neighbours_token_is_a_one_line_error(char_corpus, tmp_path, capsys):
    _train(char_corpus, tmp_path / "lstm", *LSTM)
    capsys.readouterr()
    assert main(["plot", str(tmp_path / "lstm"), "--neighbours", "a", "Q"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1
    assert "'Q' not in the run's vocabulary of 27 tokens" in captured.err
    assert not (tmp_path / "lstm" / "embeddings.png").exists()


def test_the_heat_map_shows_the_softmax_of_each_row():
    logits = np.log(np.array([[1.0, 3.0, 4.0], [2.0, 2.0, 4.0]])) + np.array([[5.0], [-7.0]])
    assert next_token_probabilities(logits) == pytest.approx(
        np.array([[0.125, 0.375, 0.5], [0.25, 0.25, 0.5]]), abs=1e-12
    )


def test_plot_a_bigram_run_adds_the_heat_map(char_corpus, tmp_path, capsys):
    _train(char_corpus, tmp_path / "bigram", "--model", "bigram")
    capsys.readouterr()
    assert main(["plot", str(tmp_path / "bigram")]) == 0
    paths = capsys.readouterr().out.split("\n\n")[1].split()
    assert paths == [str(tmp_path / "bigram" / n) for n in (*PICTURES, "bigram.png")]
    _png(tmp_path / "bigram" / "bigram.png")


def test_plot_a_word_run_counts_the_training_tokens(tmp_path, capsys):
    text = "the king said that the war was over .\nhe said the city was his .\n" * 30
    corpus = tmp_path / "words.txt"
    corpus.write_text(text)
    _train(corpus, tmp_path / "words", "--tokenizer", "word", *LSTM)
    run = load_run(tmp_path / "words", device="cpu")
    config = read_run_config(tmp_path / "words")
    counts = train_token_counts(config, run.tokenizer.vocab_size)
    train_text = split_texts(resolve_corpus(str(corpus)))["train"]
    expected = Counter(run.tokenizer.encode(train_text))
    assert counts.tolist() == [expected[i] for i in range(run.tokenizer.vocab_size)]
    capsys.readouterr()
    assert main(["plot", str(tmp_path / "words")]) == 0
    table = capsys.readouterr().out.split("\n\n")[0]
    firsts = [row.split(" | ")[0] for row in table.splitlines()[2:]]
    assert firsts == ["| `the`", "| `king`", "| `he`", "| `said`", "| `city`", "| `war`"]
    _png(tmp_path / "words" / "embeddings.png")
    assert not (tmp_path / "words" / "bigram.png").exists()


def test_without_the_token_cache_there_are_no_counts(char_corpus, tmp_path, monkeypatch):
    _train(char_corpus, tmp_path / "lstm", *LSTM)
    config = read_run_config(tmp_path / "lstm")
    assert train_token_counts(config, 27) is not None
    monkeypatch.setenv("LMFORGE_CACHE_DIR", str(tmp_path / "empty-cache"))
    assert train_token_counts(config, 27) is None
    assert train_token_counts({}, 30) is None
