import pytest
from hypothesis import given
from hypothesis import strategies as st

from lmforge.errors import TokenizerError
from lmforge.tokenizers import WordTokenizer, load_tokenizer, train_tokenizer

SEED_TEXT = "the good, the bad and the ugly"


def test_seed_example_first_appearance_order():
    tok = train_tokenizer("word", SEED_TEXT)
    assert tok.vocab == {"the": 0, "good": 1, ",": 2, "bad": 3, "and": 4, "ugly": 5}
    assert tok.encode(SEED_TEXT) == [0, 1, 2, 0, 3, 4, 0, 5]
    assert tok.decode([0, 1, 2, 0, 3, 4, 0, 5]) == SEED_TEXT


def test_words_split_from_punctuation_and_markers_kept_whole():
    tok = WordTokenizer(["x"])
    assert tok.split_text("Don't stop, <unk>! (yes)\nno") == [
        "Don't",
        "stop",
        ",",
        "<unk>",
        "!",
        "(",
        "yes",
        ")",
        "\n",
        "no",
    ]


def test_whitespace_split_matches_pytorch_word_language_model():
    tok = WordTokenizer.train(" = Valkyria = \n the @-@ end <unk> \n", split="whitespace")
    assert tok.tokens == ["=", "Valkyria", "\n", "the", "@-@", "end", "<unk>"]


def test_lowercase_option():
    tok = WordTokenizer.train("The the THE", lowercase=True)
    assert tok.tokens == ["the"]
    assert tok.encode("tHe") == [0]


def test_min_freq_drops_rare_words_and_adds_unk():
    tok = WordTokenizer.train("a a b c c c", min_freq=2)
    assert tok.tokens == ["a", "c", "<unk>"]
    assert tok.encode("a b c d") == [0, 2, 1, 2]


def test_max_vocab_keeps_most_frequent_in_first_appearance_order():
    tok = WordTokenizer.train("z y y x x x w w w w", max_vocab=3)
    assert tok.tokens == ["x", "w", "<unk>"]


def test_unknown_word_is_an_error_naming_it_without_unk():
    tok = WordTokenizer.train(SEED_TEXT)
    with pytest.raises(TokenizerError, match=r"'pretty' \(at character 4\)"):
        tok.encode("the pretty")


def test_unknown_word_becomes_unk_with_unk_option():
    tok = WordTokenizer.train(SEED_TEXT, unk=True)
    assert tok.tokens[-1] == "<unk>"
    assert tok.encode("the pretty") == [0, 6]


def test_text_containing_unk_uses_it_for_unknown_words():
    tok = WordTokenizer.train("a <unk> b", split="whitespace")
    assert tok.encode("a zzz") == [0, 1]


@given(st.lists(st.sampled_from(["the", "good", ",", "bad", ".", "\n", "(", ")", "isn't"])))
def test_encode_decode_is_stable(words):
    tok = WordTokenizer(["the", "good", ",", "bad", ".", "\n", "(", ")", "isn't"])
    ids = [tok.vocab[w] for w in words]
    assert tok.encode(tok.decode(ids)) == ids


def test_stream_decoder_matches_decode():
    tok = WordTokenizer.train("hello , world .\n( yes ) no")
    ids = tok.encode("hello, world.\n(yes) no hello")
    decoder = tok.stream_decoder()
    assert "".join(decoder.push(i) for i in ids) + decoder.flush() == tok.decode(ids)


def test_save_load_roundtrip(tmp_path):
    tok = WordTokenizer.train(SEED_TEXT + "\nÉté, déjà!", lowercase=True, unk=True)
    tok.save(tmp_path / "w.json")
    assert load_tokenizer(tmp_path / "w.json") == tok


def test_loading_a_file_of_another_format_is_a_clear_error(tmp_path):
    (tmp_path / "hf.json").write_text('{"model": {}, "pre_tokenizer": null}')
    with pytest.raises(TokenizerError, match="Hugging Face"):
        load_tokenizer(tmp_path / "hf.json")
    (tmp_path / "v9.json").write_text('{"format": "lmforge-tokenizer", "version": 9}')
    with pytest.raises(TokenizerError, match="version 9"):
        load_tokenizer(tmp_path / "v9.json")


@pytest.mark.parametrize(
    "text",
    ["a a b b c <unk>", "a a b b c", "<unk> <unk> <unk> a a b b c", "a b c d e f g"],
)
@pytest.mark.parametrize("max_vocab", [2, 3, 4])
def test_max_vocab_bounds_the_vocabulary_with_unk_counted(text, max_vocab):
    tok = WordTokenizer.train(text, max_vocab=max_vocab)
    assert tok.vocab_size <= max_vocab
    words = set(text.split())
    assert ("<unk>" in tok.tokens) == (len(words) > max_vocab or "<unk>" in words)
    assert tok.vocab_size == min(
        max_vocab, len(words | ({"<unk>"} if len(words) > max_vocab else set()))
    )
    assert max(tok.encode(text)) < tok.vocab_size
