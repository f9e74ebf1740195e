"""Hugging Face export: tokenizers.Tokenizer.from_file and transformers' AutoTokenizer give
lmforge's ids for BPE, character and word tokenizers."""

import json

import pytest

from lmforge.errors import TokenizerError
from lmforge.tokenizers import BPETokenizer, CharTokenizer, WordTokenizer, train_tokenizer
from lmforge.tokenizers.export import (
    byte_level_token,
    bytes_to_unicode,
    export_hf,
    save_hf_tokenizer_dir,
)
from tests.tokenizers.test_bpe import EOT, HARD_TEXT

tokenizers = pytest.importorskip("tokenizers")


@pytest.fixture(scope="module", autouse=True)
def python_engine():
    """Compare with lmforge's pure-Python encoder, the reference."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LMFORGE_BPE_ENGINE", "python")
        yield


WORD_TEXT = (
    "The good, the bad (and) the ugly: don't stop!\n"
    "To be [or] not {to} be; that is the question?\n\n"
    "Ünïcode wörds, 漢字 and <unk> markers... ok\n"
)
WORD_PROBES = [
    WORD_TEXT,
    "the good,the bad\n\n(the) ugly",
    "  leading spaces and trailing  \n",
    "[ ( { nested } ) ]",
    "",
]


def hf_load(tokenizer, tmp_path):
    path = export_hf(tokenizer, tmp_path / "tokenizer.json")
    return tokenizers.Tokenizer.from_file(str(path))


def corpus_text(name: str, split: str = "train") -> str:
    from lmforge.data.corpora import resolve_corpus

    return resolve_corpus(name).read(split)


def test_gpt2_byte_to_character_map():
    table = bytes_to_unicode()
    assert len(set(table.values())) == 256
    assert table[ord("A")] == "A" and table[0] == "Ā" and table[ord(" ")] == "Ġ"
    assert byte_level_token("é\n".encode()) == "Ã©Ċ"


@pytest.mark.integration
@pytest.mark.parametrize("pattern", ["gpt2", "gpt4"])
def test_bpe_ids_identical_on_tinyshakespeare_and_wikitext(tmp_path, pattern):
    shakespeare = corpus_text("tinyshakespeare")
    wikitext = corpus_text("wikitext-2", "val")
    tok = BPETokenizer.train(wikitext, vocab_size=2048, pattern=pattern, special=[EOT])
    hf = hf_load(tok, tmp_path)
    for text in (shakespeare, wikitext):
        assert hf.encode(text).ids == tok.encode(text)
    ids = tok.encode(wikitext[:3000] + EOT + HARD_TEXT, allowed_special="all")
    assert hf.encode(wikitext[:3000] + EOT + HARD_TEXT).ids == ids  # HF always matches specials
    assert hf.decode(ids, skip_special_tokens=False) == tok.decode(ids)


@pytest.mark.parametrize("pattern", ["gpt2", "gpt4", "none", r"\p{L}+|\p{N}"])
def test_bpe_every_pattern_on_hard_text(tmp_path, pattern):
    tok = BPETokenizer.train(HARD_TEXT * 20, vocab_size=330, pattern=pattern)
    hf = hf_load(tok, tmp_path)
    for text in (HARD_TEXT, "unseen: ÿ 😀 \r\n\r\n x", ""):
        ids = tok.encode(text)
        assert hf.encode(text).ids == ids
        assert hf.decode(ids) == text


def test_bpe_file_layout(tmp_path):
    tok = BPETokenizer([(104, 105), (32, 256)], pattern="gpt2", special=[EOT])
    data = json.loads(export_hf(tok, tmp_path / "t.json").read_text())
    assert data["model"]["type"] == "BPE"
    assert data["model"]["merges"] == ["h i", "Ġ hi"]
    assert data["model"]["vocab"]["Ġhi"] == 257 and data["model"]["vocab"][EOT] == 258
    assert data["added_tokens"][0]["content"] == EOT and data["added_tokens"][0]["special"]
    assert data["pre_tokenizer"]["pretokenizers"][0]["behavior"] == "Isolated"


def test_hand_made_vocabulary_with_repeated_bytes_is_refused(tmp_path):
    tok = BPETokenizer([(97, 98), (256, 99), (98, 99), (97, 258)])  # 'abc' twice
    assert not tok.has_unique_tokens()
    with pytest.raises(TokenizerError, match="same bytes"):
        export_hf(tok, tmp_path / "t.json")


@pytest.mark.parametrize("unk", [False, True])
def test_char_ids_and_text_identical(tmp_path, unk):
    tok = CharTokenizer.train(HARD_TEXT + "abc", unk=unk)
    hf = hf_load(tok, tmp_path)
    for text in (HARD_TEXT, "cab\r\n", ""):
        ids = tok.encode(text)
        assert hf.encode(text).ids == ids
        assert hf.decode(ids) == tok.decode(ids)
    if unk:
        assert hf.encode("a#").ids == tok.encode("a#") == [tok.vocab["a"], tok.unk_id]


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"unk": True},
        {"lowercase": True, "unk": True},
        {"split": "whitespace", "unk": True},
        {"min_freq": 2},
    ],
)
def test_word_ids_and_spacing_identical(tmp_path, options):
    tok = WordTokenizer.train(WORD_TEXT * 2, **options)
    hf = hf_load(tok, tmp_path)
    for text in WORD_PROBES:
        try:
            ids = tok.encode(text)
        except TokenizerError:
            with pytest.raises(Exception, match="UNK"):
                hf.encode(text)
            continue
        assert hf.encode(text).ids == ids
        # HF's decoder reproduces lmforge's spacing (single spaces, glued punctuation).
        assert hf.decode(ids) == tok.decode(ids)


def test_word_pattern_uses_pythons_word_and_space_classes(tmp_path):
    # U+0301 (a combining mark) is not \w for Python but is for Oniguruma; U+001C is \s only
    # for Python. The exported pattern must split as Python does.
    tok = WordTokenizer.train("e\u0301 a\x1cb ab", unk=True)
    hf = hf_load(tok, tmp_path)
    for text in ("e\u0301", "a\x1cb", "ab e\u0301b"):
        assert hf.encode(text).ids == tok.encode(text)


@pytest.mark.parametrize(
    "kind",
    ["bpe", "char", "word"],
)
def test_transformers_auto_tokenizer_gives_lmforge_ids(tmp_path, kind):
    transformers = pytest.importorskip("transformers")
    options = {
        "bpe": {"vocab_size": 400, "special": [EOT, "<|pad|>"]},
        "char": {},
        "word": {"unk": True},
    }[kind]
    text = WORD_TEXT * 3 + HARD_TEXT
    tok = train_tokenizer(kind, text, **options)
    out = save_hf_tokenizer_dir(tok, tmp_path / "hf", model_max_length=256)
    assert sorted(p.name for p in out.iterdir()) == [
        "special_tokens_map.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    auto = transformers.AutoTokenizer.from_pretrained(str(out))
    for probe in (WORD_TEXT, HARD_TEXT, "the (good) ugly"):
        ids = tok.encode(probe)
        assert auto(probe)["input_ids"] == ids
        assert auto.decode(ids) == tok.decode(ids)
    assert auto.model_max_length == 256
    if kind == "bpe":
        assert auto.eos_token == EOT and auto.eos_token_id == tok.special_tokens[EOT]
        both = "a" + EOT + "b"
        assert auto(both)["input_ids"] == tok.encode(both, allowed_special="all")
        assert auto.decode(auto(both)["input_ids"], skip_special_tokens=True) == "ab"
    if kind == "word":
        assert auto.unk_token == "<unk>" and auto.unk_token_id == tok.unk_id


def test_export_refuses_unknown_kinds(tmp_path):
    class Other(CharTokenizer):
        kind = "other"

    with pytest.raises(TokenizerError, match="cannot export a 'other' tokenizer"):
        export_hf(Other(["a"]), tmp_path / "t.json")
