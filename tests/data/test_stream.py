import itertools

import numpy as np
import pytest

from lmforge.data.corpora import resolve_corpus
from lmforge.data.stream import (
    WindowSampler,
    chunk_text,
    encode_corpus,
    sequential_windows,
    split_texts,
)
from lmforge.errors import LmforgeError, TokenizerError
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
