"""``lmforge tokenize train|encode|export|stats`` and ``lmforge train --tokenizer bpe``."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from lmforge.cli import main
from lmforge.tokenizers import BPETokenizer, load_tokenizer
from tests.tokenizers.test_bpe import EOT


@pytest.fixture
def verse_with_specials(verse_corpus):
    text = verse_corpus.read_text()
    verse_corpus.write_text(text.replace("\n", EOT + "\n", 3))
    return verse_corpus


def run_cli(args, capsys):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_train_encode_export_stats(verse_with_specials, tmp_path, capsys):
    corpus = verse_with_specials
    tok_path = tmp_path / "tok.json"
    code, _, err = run_cli(
        [
            "tokenize",
            "train",
            "--kind",
            "bpe",
            "--vocab-size",
            300,
            "--pattern",
            "gpt2",
            "--special",
            EOT,
            corpus,
            "-o",
            tok_path,
            "--quiet",
        ],
        capsys,
    )
    assert code == 0 and "300 tokens (43 merges, pattern gpt2)" in err
    tok = load_tokenizer(tok_path)
    assert isinstance(tok, BPETokenizer) and tok.special_tokens == {EOT: 299}
    text = corpus.read_text()

    # special-token text in the corpus is ordinary text unless --special-text allow
    code, _, err = run_cli(
        ["tokenize", "encode", tok_path, corpus, "-o", tmp_path / "plain.bin"], capsys
    )
    plain = tok.encode_ordinary(text)
    assert code == 0 and f"{len(plain):,} tokens (uint16" in err
    assert np.fromfile(tmp_path / "plain.bin", dtype="<u2").tolist() == plain
    assert 299 not in plain
    code, _, err = run_cli(
        [
            "tokenize",
            "encode",
            tok_path,
            corpus,
            "-o",
            tmp_path / "ids.bin",
            "--special-text",
            "allow",
        ],
        capsys,
    )
    expected = tok.encode(text, allowed_special="all")
    assert code == 0 and f"{len(expected):,} tokens (uint16" in err
    assert np.fromfile(tmp_path / "ids.bin", dtype="<u2").tolist() == expected
    assert expected.count(299) == 3

    code, _, err = run_cli(
        [
            "tokenize",
            "encode",
            tok_path,
            corpus,
            "-o",
            tmp_path / "x.bin",
            "--special-text",
            "error",
        ],
        capsys,
    )
    assert code == 2 and "special token '<|endoftext|>'" in err and err.count("\n") == 1
    run_cli(
        [
            "tokenize",
            "encode",
            tok_path,
            corpus,
            "-o",
            tmp_path / "p.bin",
            "--special-text",
            "plain",
        ],
        capsys,
    )
    assert np.fromfile(tmp_path / "p.bin", dtype="<u2").tolist() == tok.encode_ordinary(text)

    code, _, _ = run_cli(
        ["tokenize", "export", tok_path, "--format", "hf", "-o", tmp_path / "hf.json"], capsys
    )
    assert code == 0 and json.loads((tmp_path / "hf.json").read_text())["model"]["type"] == "BPE"
    code, _, _ = run_cli(["tokenize", "export", tok_path, "-o", tmp_path / "hfdir"], capsys)
    assert code == 0 and (tmp_path / "hfdir" / "tokenizer_config.json").is_file()

    code, out, _ = run_cli(["tokenize", "stats", tok_path, corpus, "--json", "--top", 3], capsys)
    stats = json.loads(out)
    assert code == 0 and stats["tokens"] == len(plain) and stats["vocab_size"] == 300
    assert stats["bytes_per_token"] == pytest.approx(len(text.encode()) / len(plain))
    assert (
        len(stats["longest"]) == 3 and stats["longest"][0]["bytes"] >= stats["longest"][1]["bytes"]
    )
    counts = [row["count"] for row in stats["most_frequent"]]
    assert counts == sorted(counts, reverse=True) and counts[0] == max(np.bincount(plain))
    code, out, _ = run_cli(["tokenize", "stats", tok_path, corpus], capsys)
    assert code == 0 and "bytes per token" in out and "most frequent tokens" in out


@pytest.mark.parametrize("kind", ["char", "word"])
def test_char_and_word_kinds(verse_corpus, tmp_path, capsys, kind):
    tok_path = tmp_path / "tok.json"
    code, _, _ = run_cli(
        ["tokenize", "train", "--kind", kind, verse_corpus, "-o", tok_path], capsys
    )
    tok = load_tokenizer(tok_path)
    assert code == 0 and tok.kind == kind
    run_cli(["tokenize", "encode", tok_path, verse_corpus, "-o", tmp_path / "ids.bin"], capsys)
    ids = np.fromfile(tmp_path / "ids.bin", dtype="<u2").tolist()
    assert ids == tok.encode(verse_corpus.read_text())


def test_large_vocabularies_are_written_as_uint32(tmp_path, capsys):
    merges = [(a, b) for a in range(256) for b in range(256)][:65_300]
    tok = BPETokenizer(merges, pattern="gpt2")
    tok.save(tmp_path / "big.json")
    (tmp_path / "c.txt").write_text("hello world\n")
    code, _, err = run_cli(
        [
            "tokenize",
            "encode",
            tmp_path / "big.json",
            tmp_path / "c.txt",
            "-o",
            tmp_path / "ids.bin",
        ],
        capsys,
    )
    assert code == 0 and "uint32" in err
    assert np.fromfile(tmp_path / "ids.bin", dtype="<u4").tolist() == tok.encode("hello world\n")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--vocab-size", "200"], "vocabulary size 200 is too small"),
        (["--vocab-size", "256", "--special", "<a>"], "at least 257"),
        (["--vocab-size", "300", "--pattern", "[a-"], "invalid split pattern"),
        ([], "needs --vocab-size"),
    ],
)
def test_bad_training_input_is_a_one_line_error(tmp_path, capsys, args, message):
    corpus = tmp_path / "c.txt"
    corpus.write_text("some text here\n")
    code, _, err = run_cli(["tokenize", "train", corpus, "-o", tmp_path / "t.json", *args], capsys)
    assert code == 2 and message in err and err.startswith("lmforge: error: ")
    assert err.count("\n") == 1 and not (tmp_path / "t.json").exists()


def test_empty_corpus_is_a_one_line_error(tmp_path, capsys):
    corpus = tmp_path / "empty.txt"
    corpus.write_text("")
    code, _, err = run_cli(
        ["tokenize", "train", "--vocab-size", 300, corpus, "-o", tmp_path / "t.json"], capsys
    )
    assert code == 2 and "empty" in err and err.count("\n") == 1


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"version": "1.0", "model": {}, "pre_tokenizer": None}, "looks like a Hugging Face"),
        ({"format": "lmforge-tokenizer", "version": 7, "kind": "bpe"}, "format version 7"),
        (
            {"format": "lmforge-tokenizer", "version": 1, "kind": "bpe", "pattern": "gpt4"},
            "damaged",
        ),
    ],
)
def test_foreign_tokenizer_files_are_one_line_errors(tmp_path, capsys, content, message):
    path = tmp_path / "tok.json"
    path.write_text(json.dumps(content))
    (tmp_path / "c.txt").write_text("text\n")
    for command in (
        ["encode", path, tmp_path / "c.txt", "-o", tmp_path / "o.bin"],
        ["export", path, "-o", tmp_path / "o.json"],
        ["stats", path, tmp_path / "c.txt"],
    ):
        code, _, err = run_cli(["tokenize", *command], capsys)
        assert code == 2 and message in err and err.count("\n") == 1


def test_tokenize_commands_never_import_torch(tmp_path, verse_corpus):
    script = textwrap.dedent(
        f"""
        import sys
        from lmforge.cli import main
        tok, corpus, out = {str(tmp_path / "t.json")!r}, {str(verse_corpus)!r}, {str(tmp_path)!r}
        assert main(["tokenize", "train", "--vocab-size", "280", corpus, "-o", tok]) == 0
        assert main(["tokenize", "encode", tok, corpus, "-o", out + "/ids.bin"]) == 0
        assert main(["tokenize", "export", tok, "-o", out + "/hf.json"]) == 0
        assert main(["tokenize", "stats", tok, corpus, "--json"]) == 0
        print("torch imported:", "torch" in sys.modules)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert "torch imported: False" in proc.stdout


def test_train_a_model_with_bpe_then_with_the_saved_tokenizer(verse_corpus, tmp_path, capsys):
    common = ["--corpus", verse_corpus, "--model", "bigram", "--max-steps", 3, "--batch-size", 4]
    common += ["--block-size", 8, "--eval-interval", 3, "--eval-iters", 1, "--device", "cpu"]
    common += ["--quiet"]
    code, _, _ = run_cli(
        [
            "train",
            "--tokenizer",
            "bpe",
            "--vocab-size",
            290,
            "--pattern",
            "gpt2",
            "--out",
            tmp_path / "a",
            *common,
        ],
        capsys,
    )
    assert code == 0
    trained = load_tokenizer(tmp_path / "a" / "tokenizer.json")
    assert trained.kind == "bpe" and trained.vocab_size == 290
    config = json.loads((tmp_path / "a" / "config.json").read_text())
    assert config["vocab_size"] == 290

    tok_path = tmp_path / "tok.json"
    run_cli(["tokenize", "train", "--vocab-size", 270, verse_corpus, "-o", tok_path], capsys)
    code, _, _ = run_cli(
        ["train", "--tokenizer-file", tok_path, "--out", tmp_path / "b", *common], capsys
    )
    assert code == 0
    assert load_tokenizer(tmp_path / "b" / "tokenizer.json") == load_tokenizer(tok_path)


@pytest.mark.parametrize("special_text", [None, "allow"])
def test_train_and_eval_all_encode_special_text_alike(
    verse_with_specials, tmp_path, capsys, special_text
):
    """Training encodes special-token text as plain text unless --special-text allow, and
    `eval --split all` scores exactly the ids training made (train + val)."""
    from lmforge.data.stream import TokenStream
    from lmforge.fileio import cache_dir

    run = tmp_path / "run"
    args = ["train", "--corpus", verse_with_specials, "--out", run, "--quiet"]
    args += ["--tokenizer", "bpe", "--vocab-size", 300, "--special", EOT, "--model", "bigram"]
    args += ["--max-steps", 1, "--eval-iters", 1, "--batch-size", 4, "--block-size", 8]
    if special_text:
        args += ["--special-text", special_text]
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    tok = load_tokenizer(run / "tokenizer.json")
    text = verse_with_specials.read_text()
    (meta_path,) = (cache_dir() / "tokens").glob("*/meta.json")
    stream = TokenStream(meta_path.parent, json.loads(meta_path.read_text()))
    trained = stream.tokens("train").tolist() + stream.tokens("val").tolist()
    if special_text == "allow":
        assert trained == tok.encode(text, allowed_special="all") and trained.count(299) == 3
    else:
        assert trained == tok.encode_ordinary(text) and 299 not in trained

    code, out, err = run_cli(["eval", run, "--split", "all", "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["tokens"] == len(trained) - 1  # predictions
