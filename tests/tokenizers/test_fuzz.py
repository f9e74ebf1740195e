"""Property tests for every tokenizer kind: what each promises to round-trip, and files.

What each kind promises (and these properties check):

* ``char``: ``decode(encode(s)) == s`` for every string ``s`` of characters in its vocabulary;
  any other character is an error (or ``<unk>`` with ``unk=True``).
* ``word``: the original spacing is not kept, so the promise is ``encode(decode(ids)) == ids``
  for any ids; hence ``decode(encode(s)) == s`` for every ``s`` written with the canonical
  spacing (``s == decode(ids)``), and ``encode(decode(encode(s))) == encode(s)`` for any ``s``.
* ``bpe``: ``decode(encode(s)) == s`` for *every* string without lone surrogates, on both
  engines, with or without special tokens allowed; ``decode`` of any ids never fails (bytes
  that are not UTF-8 become U+FFFD) and streaming decode gives the same text.
* every kind: a lone surrogate (which UTF-8 cannot encode) is a ``TokenizerError``, never
  another exception, and ``load(save(t)) == t``, encoding alike.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from lmforge.errors import TokenizerError
from lmforge.tokenizers import (
    BPETokenizer,
    CharTokenizer,
    WordTokenizer,
    load_tokenizer,
    tokenizer_from_dict,
)

EOT = "<|endoftext|>"
FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# Any code point but lone surrogates (hypothesis leaves those out of text() by default).
any_text = st.text(max_size=60)
# Text that mixes a few words, punctuation, spacing and markup, so vocabularies have merges.
wordy_text = st.lists(
    st.sampled_from(
        [
            "the",
            " cat",
            "Ünï",
            "漢字",
            "don't",
            ",",
            ".",
            " ",
            "  ",
            "\n",
            "\t",
            "(",
            ")",
            "<unk>",
            "42",
            "🙂",
            "é",
            "'s",
            "\r\n",
        ]
    ),
    min_size=1,
    max_size=40,
).map("".join)
surrogate = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)


def same_after_file(tok):
    """``tok`` saved to a file and loaded back, and rebuilt from its JSON description."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "tok.json"
        tok.save(path)
        loaded = load_tokenizer(path)
    rebuilt = tokenizer_from_dict(json.loads(tok.to_json()))
    assert loaded == tok == rebuilt and loaded.to_json() == tok.to_json()
    return loaded


# --- char -----------------------------------------------------------------------------------


@FUZZ
@given(training=any_text.filter(bool), data=st.data())
def test_char_roundtrips_every_string_over_its_alphabet(training, data):
    tok = CharTokenizer.train(training)
    text = data.draw(st.text(alphabet=sorted(set(training)), max_size=80))
    ids = tok.encode(text)
    assert len(ids) == len(text) and tok.decode(ids) == text
    assert same_after_file(tok).encode(text) == ids


@FUZZ
@given(training=any_text.filter(bool), text=any_text)
def test_char_outside_its_alphabet_is_an_error_or_unk(training, text):
    strict, lenient = CharTokenizer.train(training), CharTokenizer.train(training, unk=True)
    unknown = [c for c in text if c not in strict.vocab]
    if unknown:
        with pytest.raises(TokenizerError, match="not in the vocabulary"):
            strict.encode(text)
    ids = lenient.encode(text)
    assert ids.count(lenient.unk_id) == len(unknown)
    assert lenient.decode(ids) == "".join(c if c in strict.vocab else "<unk>" for c in text)
    assert same_after_file(lenient).encode(text) == ids


# --- word -----------------------------------------------------------------------------------


@FUZZ
@given(
    training=wordy_text,
    split=st.sampled_from(["words", "whitespace"]),
    lowercase=st.booleans(),
    data=st.data(),
)
def test_word_decoding_then_encoding_gives_the_ids_back(training, split, lowercase, data):
    try:
        tok = WordTokenizer.train(training, split=split, lowercase=lowercase)
    except TokenizerError:
        assume(False)  # no words at all (only spaces)
    ids = data.draw(st.lists(st.integers(0, tok.vocab_size - 1), max_size=30))
    text = tok.decode(ids)
    assert tok.encode(text) == ids
    assert tok.decode(tok.encode(text)) == text  # canonical spacing round-trips exactly
    decoder = tok.stream_decoder()
    assert "".join(decoder.push(i) for i in ids) + decoder.flush() == text
    assert same_after_file(tok).encode(text) == ids


@FUZZ
@given(training=wordy_text, text=wordy_text, split=st.sampled_from(["words", "whitespace"]))
def test_word_encoding_is_stable_under_decoding(training, text, split):
    try:
        tok = WordTokenizer.train(training + "\n" + text, split=split)
    except TokenizerError:
        assume(False)
    ids = tok.encode(text)
    assert tok.encode(tok.decode(ids)) == ids


# --- bpe ------------------------------------------------------------------------------------


@pytest.mark.parametrize("engine", ["python", "auto"])  # auto: tiktoken when it can
@FUZZ
@given(
    training=wordy_text,
    text=st.one_of(any_text, wordy_text),
    pattern=st.sampled_from(["gpt2", "gpt4", "none"]),
    extra=st.integers(0, 40),
)
def test_bpe_roundtrips_every_string(engine, training, text, pattern, extra):
    if engine == "auto":
        pytest.importorskip("tiktoken")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LMFORGE_BPE_ENGINE", engine)
        tok = BPETokenizer.train(training, vocab_size=257 + extra, pattern=pattern, special=[EOT])
        assert (tok.engine() is None) == (engine == "python" or pattern == "none")
        check_bpe_roundtrip(tok, text)


def check_bpe_roundtrip(tok, text):
    ids = tok.encode_ordinary(text)
    assert tok.decode(ids) == text and tok.decode_bytes(ids) == text.encode("utf-8")
    with_specials = text[: len(text) // 2] + EOT + text[len(text) // 2 :]
    ids = tok.encode(with_specials, allowed_special="all")
    assert tok.decode(ids) == with_specials and ids.count(tok.special_tokens[EOT]) == 1
    assert same_after_file(tok).encode_ordinary(text) == tok.encode_ordinary(text)


@FUZZ
@given(training=wordy_text, data=st.data())
def test_bpe_decodes_any_ids_and_streams_the_same_text(training, data):
    tok = BPETokenizer.train(training, vocab_size=300, pattern="gpt4", special=[EOT])
    ids = data.draw(st.lists(st.integers(0, tok.vocab_size - 1), max_size=40))
    text = tok.decode(ids)
    decoder = tok.stream_decoder()
    assert "".join(decoder.push(i) for i in ids) + decoder.flush() == text


# --- every kind -----------------------------------------------------------------------------


@FUZZ
@given(
    kind=st.sampled_from(["char", "word", "bpe"]),
    before=any_text,
    bad=surrogate,
    after=any_text,
)
def test_a_lone_surrogate_is_a_tokenizer_error(kind, before, bad, after):
    text = before + bad + after
    trained = {
        "char": lambda t: CharTokenizer.train(t, unk=True),
        "word": lambda t: WordTokenizer.train(t, unk=True),
        "bpe": lambda t: BPETokenizer.train(t, vocab_size=260),
    }[kind]
    with pytest.raises(TokenizerError, match="surrogate"):
        trained(text)
    tok = trained("a b c")
    if kind != "word":  # a word tokenizer with <unk> maps an unknown word to <unk>
        with pytest.raises(TokenizerError, match="surrogate"):
            tok.encode(text)
