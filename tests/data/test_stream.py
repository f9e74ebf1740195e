import itertools
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmforge.data import reader
from lmforge.data import stream as stream_module
from lmforge.data.corpora import resolve_corpus
from lmforge.data.stream import (
    WindowSampler,
    chunk_stream,
    chunk_text,
    encode_corpus,
    held_out_cut,
    sequential_windows,
    split_texts,
)
from lmforge.errors import CorpusError, LmforgeError, TokenizerError
from lmforge.tokenizers import CharTokenizer, WordTokenizer
from tests.conftest import markov_text


def test_chunks_rejoin_and_encode_like_the_whole_text():
    text = markov_text(50_000, alphabet="ab  \n\ncd")
    pieces = list(chunk_text(text, size=1000))
    assert "".join(pieces) == text
    assert len(pieces) > 10
    for piece, following in itertools.pairwise(pieces):
        assert piece.endswith("\n")
        between_words = not piece[-2].isspace() and not following[0].isspace()
        before_a_spaced_word = following[0] == " " and not following[1].isspace()
        assert between_words or before_a_spaced_word
    word = WordTokenizer.train(text)
    assert [i for p in pieces for i in word.encode(p)] == word.encode(text)


def test_split_is_last_tenth_of_the_text_from_a_line_start(tiny_corpus):
    texts = split_texts(resolve_corpus(tiny_corpus))
    whole = tiny_corpus.read_text()
    assert texts["train"] + texts["val"] == whole
    assert texts["train"].endswith("\n")
    assert "\n" not in whole[int(len(whole) * 0.9) : len(texts["train"]) - 1]
    assert int(len(whole) * 0.9) <= len(texts["train"]) < int(len(whole) * 0.9) + 100


def test_split_without_line_breaks_cuts_at_a_space():
    from lmforge.data.stream import held_out_cut

    assert held_out_cut("aaaa bbbb cccc", 0.3) == 10
    assert held_out_cut("abcdefghij", 0.3) == 7


def test_encode_corpus_writes_uint16_memmaps_and_reuses_them(tiny_corpus, tmp_path):
    corpus = resolve_corpus(tiny_corpus)
    tok = CharTokenizer.train(tiny_corpus.read_text())
    stream = encode_corpus(corpus, tok, root=tmp_path)
    train = stream.tokens("train")
    assert isinstance(train, np.memmap) and train.dtype == np.uint16
    assert tok.decode(train.tolist()) + tok.decode(stream.tokens("val").tolist()) == (
        tiny_corpus.read_text()
    )
    assert stream.num_chars("val") == len(split_texts(corpus)["val"])
    mtime = (stream.directory / "train.bin").stat().st_mtime_ns
    again = encode_corpus(corpus, tok, root=tmp_path)
    assert again.directory == stream.directory
    assert (again.directory / "train.bin").stat().st_mtime_ns == mtime


def test_large_vocabulary_uses_uint32(tmp_path):
    words = " ".join(f"w{i}" for i in range(80_000))
    path = tmp_path / "many.txt"
    path.write_text(words)
    tok = WordTokenizer.train(words)
    stream = encode_corpus(resolve_corpus(path), tok, root=tmp_path)
    assert stream.tokens("train").dtype == np.uint32
    assert stream.tokens("train").max() > 65535


def test_window_sampler_draws_shifted_windows_reproducibly():
    tokens = np.arange(1000, dtype=np.uint16)
    a = WindowSampler(tokens, batch_size=8, block_size=16, seed=3)
    b = WindowSampler(tokens, batch_size=8, block_size=16, seed=3)
    x, y = a.next_batch()
    assert x.shape == y.shape == (8, 16) and x.dtype == np.int64
    assert (y == x + 1).all()  # y is x shifted by one in the stream
    assert (np.diff(x, axis=1) == 1).all()
    assert (x[:, 0] <= 1000 - 17).all()
    x2, _ = b.next_batch()
    assert (x == x2).all()


def test_window_sampler_state_roundtrip():
    tokens = np.arange(500)
    a = WindowSampler(tokens, 4, 8, seed=0)
    a.next_batch()
    state = a.state_dict()
    expected = a.next_batch()[0]
    b = WindowSampler(tokens, 4, 8, seed=99)
    b.load_state_dict(state)
    assert (b.next_batch()[0] == expected).all()


def test_ranks_split_one_global_batch():
    tokens = np.arange(10_000)
    whole = WindowSampler(tokens, 8, 4, seed=5).next_batch()[0]
    parts = [
        WindowSampler(tokens, 8, 4, seed=5, rank=r, world_size=2).next_batch()[0] for r in range(2)
    ]
    assert (np.concatenate(parts) == whole).all()


def test_too_short_split_is_a_clear_error():
    with pytest.raises(LmforgeError, match="--block-size"):
        WindowSampler(np.arange(10), 2, 16, seed=0)


def test_sequential_windows_cover_every_prediction_once():
    tokens = np.arange(103)
    pairs = []
    for x, y in sequential_windows(tokens, block_size=10, batch_size=3):
        pairs += list(zip(x.ravel().tolist(), y.ravel().tolist(), strict=True))
    assert pairs == [(i, i + 1) for i in range(102)]


def test_special_token_text_in_a_corpus_is_plain_text_unless_allowed(tmp_path):
    from lmforge.tokenizers import BPETokenizer

    eot = "<|endoftext|>"
    text = ("one doc" + eot + "\n" + "two\n") * 40
    path = tmp_path / "docs.txt"
    path.write_text(text)
    corpus = resolve_corpus(path)
    tok = BPETokenizer.train(text, vocab_size=280, pattern="gpt2", special=[eot])
    plain = encode_corpus(corpus, tok, root=tmp_path, val_fraction=0.5)
    allowed = encode_corpus(corpus, tok, root=tmp_path, val_fraction=0.5, special_text="allow")
    assert plain.directory != allowed.directory  # the mode is part of the cache key
    train_text = split_texts(corpus, 0.5)["train"]
    assert plain.tokens("train").tolist() == tok.encode_ordinary(train_text)
    assert allowed.tokens("train").tolist() == tok.encode(train_text, allowed_special="all")
    assert tok.special_tokens[eot] not in plain.tokens("train")
    with pytest.raises(TokenizerError, match="special token"):
        encode_corpus(corpus, tok, root=tmp_path, val_fraction=0.5, special_text="error")
    with pytest.raises(TokenizerError, match="special-text mode"):
        encode_corpus(corpus, tok, root=tmp_path, special_text="maybe")


@pytest.mark.integration
def test_wikitext_unk_is_a_word_of_the_word_vocabulary():
    """WikiText-2's <unk> is a word of its text: the word vocabulary keeps it (33,278 words,
    as in PyTorch's example), and the text <unk> encodes to it and decodes back."""
    from lmforge.tokenizers.build import tokenizer_training_text

    corpus = resolve_corpus("wikitext-2")
    tok = WordTokenizer.train(tokenizer_training_text("word", corpus, 0.1), split="whitespace")
    assert tok.vocab_size == 33_278 and tok.unk_id == tok.vocab["<unk>"]
    ids = tok.encode("the <unk> of")
    assert ids[1] == tok.unk_id and tok.decode(ids) == "the <unk> of"


# --- streaming: the split, the chunks, parallel and resumed encoding, memory -----------------

lines_text = st.lists(
    st.sampled_from(["ab", "é漢", " x", "\n", "\n", " ", "🙂\n", "cd e"]), max_size=60
).map("".join)


def old_split_texts(corpus, val_fraction):
    """The split as it was made before streaming: the whole text in memory."""
    texts = {split: corpus.read(split) for split in corpus.splits}
    if "val" not in texts:
        text = texts.pop("train")
        cut = held_out_cut(text, val_fraction)
        texts = {"train": text[:cut], "val": text[cut:], **texts}
    return texts


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    files=st.lists(lines_text.filter(str.strip), min_size=1, max_size=3),
    val_fraction=st.sampled_from([0.1, 0.25, 0.5, 0.9]),
)
def test_streaming_split_equals_the_split_of_the_whole_text(files, val_fraction):
    with tempfile.TemporaryDirectory() as folder:
        for i, text in enumerate(files):
            Path(folder, f"{i}.txt").write_text(text, encoding="utf-8")
        corpus = resolve_corpus(folder if len(files) > 1 else Path(folder, "0.txt"))
        assert split_texts(corpus, val_fraction) == old_split_texts(corpus, val_fraction)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=lines_text, cuts=st.lists(st.integers(0, 400)), size=st.integers(1, 30))
def test_chunks_of_a_stream_of_blocks_equal_chunks_of_the_whole_text(text, cuts, size):
    bounds = sorted({min(c, len(text)) for c in cuts} | {0, len(text)})
    blocks = [text[a:b] for a, b in itertools.pairwise(bounds)]
    assert list(chunk_stream(blocks, size)) == list(chunk_text(text, size))


def test_reading_in_blocks_reports_bad_utf8_at_its_byte_offset(tmp_path, monkeypatch):
    monkeypatch.setattr(reader, "BLOCK_BYTES", 7)
    path = tmp_path / "bad.txt"
    path.write_bytes("ab\ncdé\n".encode() * 3 + b"x\xe9y\n")
    with pytest.raises(CorpusError, match=r"byte 0xe9 at byte offset 25 "):
        split_texts(resolve_corpus(path))
    cut = tmp_path / "cut.txt"
    cut.write_bytes(b"abc\n" * 3 + "é".encode()[:1])  # ends inside a character
    with pytest.raises(CorpusError, match=r"byte 0xc3 at byte offset 12 "):
        split_texts(resolve_corpus(cut))
    blank = tmp_path / "blank.txt"
    blank.write_text(" \n\n")
    with pytest.raises(CorpusError, match="is empty"):
        CharTokenizer.train(
            stream_module.corpus_chunks(reader.corpus_spans(resolve_corpus(blank), "train"))
        )


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks of about 300 characters read in 1 kB blocks, progress recorded every chunk."""
    monkeypatch.setattr(stream_module, "CHUNK_CHARS", 300)
    monkeypatch.setattr(stream_module, "RECORD_EVERY", 1)
    monkeypatch.setattr(reader, "BLOCK_BYTES", 1000)


def kinds_for(text):
    from lmforge.tokenizers import BPETokenizer

    return [
        CharTokenizer.train(text),
        WordTokenizer.train(text),
        BPETokenizer.train(text, vocab_size=300, pattern="gpt2"),
    ]


def test_encoding_in_processes_equals_encoding_in_one(tmp_path, small_chunks):
    text = markov_text(12_000, alphabet="ab cd\né")
    path = tmp_path / "corpus.txt"
    path.write_text(text, encoding="utf-8")
    corpus = resolve_corpus(path)
    texts = split_texts(corpus)
    for tok in kinds_for(text)[1:]:  # word and BPE (char goes through the same code)
        serial = encode_corpus(corpus, tok, root=tmp_path / "one", processes=1)
        parallel = encode_corpus(corpus, tok, root=tmp_path / "two", processes=2)
        for split in ("train", "val"):
            expected = tok.encode(texts[split])
            assert serial.tokens(split).tolist() == expected, tok.kind
            assert parallel.tokens(split).tolist() == expected, tok.kind
            assert parallel.num_chars(split) == len(texts[split])


def test_an_interrupted_encoding_resumes_where_it_stopped(tmp_path, small_chunks, monkeypatch):
    text = markov_text(8_000, alphabet="ab cd\né")
    path = tmp_path / "corpus.txt"
    path.write_text(text, encoding="utf-8")
    corpus = resolve_corpus(path)
    for tok in kinds_for(text):
        one_shot = encode_corpus(corpus, tok, root=tmp_path / f"once-{tok.kind}", processes=1)
        root = tmp_path / f"twice-{tok.kind}"
        encoded: list[int] = []
        original = type(tok).encode_chunk

        def interrupted(self, chunk, special_text="plain", encoded=encoded, original=original):
            if len(encoded) == 12:
                raise KeyboardInterrupt
            encoded.append(len(chunk))
            return original(self, chunk, special_text)

        with monkeypatch.context() as patch:
            patch.setattr(type(tok), "encode_chunk", interrupted)
            with pytest.raises(KeyboardInterrupt):
                encode_corpus(corpus, tok, root=root, processes=1)
        assert not list(root.glob("*/meta.json")) and list(root.glob(".partial-*/progress.json"))
        resumed = encode_corpus(corpus, tok, root=root, processes=1)
        for split in ("train", "val"):
            assert resumed.tokens(split).tolist() == one_shot.tokens(split).tolist(), tok.kind
            assert resumed.num_chars(split) == one_shot.num_chars(split)
        assert resumed.meta == one_shot.meta
        assert not list(root.glob(".partial-*"))


def test_encoding_a_corpus_holds_a_chunk_not_the_text(tmp_path, monkeypatch):
    """Splitting, cutting and encoding 4 MB of text allocates well under 1 MB at a time
    (hashing the corpus, which reads 4 MB blocks, is left out)."""
    import tracemalloc

    from lmforge.data.corpora import Corpus

    monkeypatch.setattr(Corpus, "fingerprint", lambda self: "fixed")
    monkeypatch.setattr(stream_module, "CHUNK_CHARS", 5000)
    monkeypatch.setattr(reader, "BLOCK_BYTES", 1 << 16)
    path = tmp_path / "big.txt"
    line = "the quick brown fox jumps over the lazy dog\n"
    path.write_text(line * (4_000_000 // len(line)))
    corpus = resolve_corpus(path)
    tok = CharTokenizer.train(line)
    tracemalloc.start()
    try:
        stream = encode_corpus(corpus, tok, root=tmp_path, processes=1, progress=False)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert stream.num_tokens("train") + stream.num_tokens("val") == path.stat().st_size
    assert peak < 1_000_000


def test_training_from_chunks_equals_training_on_the_whole_text():
    from lmforge.tokenizers import BPETokenizer

    eot = "<|endoftext|>"
    text = (markov_text(6_000, alphabet="ab cd\né,") + eot + "\n") * 2
    chunks = list(chunk_text(text, 300))
    assert len(chunks) > 10
    assert CharTokenizer.train(iter(chunks)) == CharTokenizer.train(text)
    for options in ({}, {"lowercase": True, "min_freq": 2}):
        whole = WordTokenizer.train(text, **options)
        assert WordTokenizer.train(iter(chunks), processes=2, **options) == whole
    whole = BPETokenizer.train(text, vocab_size=320, pattern="gpt4", special=[eot])
    assert BPETokenizer.train(iter(chunks), 320, "gpt4", [eot], processes=2) == whole
    assert BPETokenizer.train(iter(chunks), 320, "gpt4", [eot]) == whole
