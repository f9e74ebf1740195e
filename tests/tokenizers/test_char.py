import pytest
from hypothesis import given
from hypothesis import strategies as st

from lmforge.errors import TokenizerError
from lmforge.tokenizers import CharTokenizer, load_tokenizer


def test_vocabulary_is_sorted_distinct_characters():
    tok = CharTokenizer.train("hello world")
    assert tok.chars == [" ", "d", "e", "h", "l", "o", "r", "w"]
    assert tok.vocab_size == 8
    assert tok.encode("hold") == [3, 5, 4, 1]
    assert tok.decode([3, 5, 4, 1]) == "hold"


@given(st.text(min_size=1))
def test_decode_encode_roundtrip(text):
    tok = CharTokenizer.train(text)
    assert tok.decode(tok.encode(text)) == text
    assert tok.encode_array(text).tolist() == [tok.vocab[c] for c in text]


def test_unknown_character_is_an_error_naming_it():
    tok = CharTokenizer.train("abc")
    with pytest.raises(TokenizerError, match=r"'z' \(at character 2\)"):
        tok.encode("abz")


def test_unknown_character_becomes_unk_when_trained_with_it():
    tok = CharTokenizer.train("abc", unk=True)
    assert tok.vocab_size == 4
    assert tok.encode("azb") == [0, 3, 1]
    assert tok.decode([0, 3]) == "a<unk>"


def test_save_load_roundtrip(tmp_path):
    tok = CharTokenizer.train("Ünïcode ✓ 漢字\n", unk=True)
    tok.save(tmp_path / "tok.json")
    loaded = load_tokenizer(tmp_path / "tok.json")
    assert loaded == tok
    assert loaded.to_json() == tok.to_json()
    assert loaded.encode("漢✓") == tok.encode("漢✓")


def test_decode_rejects_out_of_range_ids():
    tok = CharTokenizer.train("ab")
    with pytest.raises(TokenizerError, match="outside the vocabulary"):
        tok.decode([5])
