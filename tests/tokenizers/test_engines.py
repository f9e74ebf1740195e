"""The tiktoken engine: a tiktoken.Encoding built from lmforge's merges gives lmforge's ids."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmforge.data.stream import chunk_text
from lmforge.errors import TokenizerError
from lmforge.tokenizers import BPETokenizer
from lmforge.tokenizers.engines import tiktoken_incompatibility, to_tiktoken
from tests.conftest import markov_text
from tests.tokenizers.test_bpe import EOT, HARD_TEXT

tiktoken = pytest.importorskip("tiktoken")


@pytest.fixture(scope="module", autouse=True)
def python_engine():
    """lmforge's side of every comparison is the pure-Python encoder (the reference); the
    tiktoken side is built explicitly with to_tiktoken."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LMFORGE_BPE_ENGINE", "python")
        yield


def corpus_text(name: str, split: str = "train") -> str:
    from lmforge.data.corpora import resolve_corpus

    return resolve_corpus(name).read(split)


@pytest.mark.integration
@pytest.mark.parametrize("pattern", ["gpt2", "gpt4"])
def test_same_ids_as_lmforge_on_tinyshakespeare_and_wikitext(pattern):
    shakespeare = corpus_text("tinyshakespeare")
    wikitext = corpus_text("wikitext-2", "val")
    tok = BPETokenizer.train(shakespeare, vocab_size=2048, pattern=pattern, special=[EOT])
    enc = to_tiktoken(tok)
    assert tok.engine() is None
    for text in (shakespeare, wikitext):
        assert enc.encode_ordinary(text) == tok.encode(text)
    mixed = wikitext[:5000] + EOT + shakespeare[:5000]
    assert enc.encode(mixed, allowed_special="all") == tok.encode(mixed, allowed_special="all")


@settings(max_examples=200, deadline=None)
@given(
    training=st.text(alphabet="ab c\n.", min_size=1, max_size=400),
    vocab_size=st.integers(257, 320),
    pattern=st.sampled_from(["gpt2", "gpt4"]),
    texts=st.lists(st.text(alphabet="ab c\n.", max_size=60), min_size=1, max_size=5),
)
def test_random_vocabularies_agree_on_random_text(training, vocab_size, pattern, texts):
    # Small alphabets make many tokens that could be joined in several ways: where tiktoken's
    # merging by the rank of the joined bytes could part from the merge list.
    tok = BPETokenizer.train(training, vocab_size=vocab_size, pattern=pattern)
    assert tiktoken_incompatibility(tok) is None
    enc = to_tiktoken(tok)
    for text in [*texts, training]:
        assert enc.encode_ordinary(text) == tok.encode(text)


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_any_unicode_text_agrees(text):
    assert ENCODING.encode_ordinary(text) == TOKENIZER.encode_ordinary(text)


TOKENIZER = BPETokenizer.train(markov_text(5000) + HARD_TEXT * 10, vocab_size=350)
ENCODING = to_tiktoken(TOKENIZER)


def test_a_hand_made_vocabulary_that_tiktoken_would_encode_differently_is_refused(monkeypatch):
    monkeypatch.setenv("LMFORGE_BPE_ENGINE", "auto")
    # Merges (b, c), (a, b), (ab, c): 'abc' is [a, bc] by the merge list, but tiktoken, which
    # merges by the rank of the joined bytes, would go on to join a + bc into the token 'abc'.
    tok = BPETokenizer([(98, 99), (97, 98), (257, 99)], pattern="gpt2")
    assert tok.encode("abc") == [97, 256]
    naive = tiktoken.Encoding(
        name="naive",
        pat_str=r"\S+",
        mergeable_ranks={tok.token_bytes(i): i for i in range(tok.vocab_size)},
        special_tokens={},
    )
    assert naive.encode_ordinary("abc") == [258]  # what a blind conversion would give
    assert "token 258" in tiktoken_incompatibility(tok)
    assert tok.engine() is None  # the automatic choice stays on pure Python
    with pytest.raises(TokenizerError, match="token 258"):
        to_tiktoken(tok)


def test_custom_patterns_stay_on_python(monkeypatch):
    monkeypatch.setenv("LMFORGE_BPE_ENGINE", "auto")
    assert BPETokenizer([], pattern="gpt2").engine() is not None
    tok = BPETokenizer([], pattern=r"\w+")
    assert tok.engine() is None
    assert "not '\\\\w+'" in tiktoken_incompatibility(tok)


def test_engine_variable(monkeypatch):
    monkeypatch.setenv("LMFORGE_BPE_ENGINE", "python")
    assert BPETokenizer([]).engine() is None
    monkeypatch.setenv("LMFORGE_BPE_ENGINE", "tiktoken")
    assert BPETokenizer([]).engine() is not None
    with pytest.raises(TokenizerError, match="gpt2 and gpt4"):
        BPETokenizer([], pattern="none").engine()
    monkeypatch.setenv("LMFORGE_BPE_ENGINE", "rust")
    with pytest.raises(TokenizerError, match="LMFORGE_BPE_ENGINE='rust' is not an engine"):
        BPETokenizer([]).engine()


def test_bulk_paths_agree_with_the_python_encoder(monkeypatch):
    text = (markov_text(20_000, alphabet="ab c.\n") + EOT) * 2
    monkeypatch.setenv("LMFORGE_BPE_ENGINE", "tiktoken")
    fast = BPETokenizer.train(text, vocab_size=300, pattern="gpt4", special=[EOT])
    assert fast.engine() is not None  # the engine is chosen on first use
    monkeypatch.setenv("LMFORGE_BPE_ENGINE", "python")
    slow = BPETokenizer.train(text, vocab_size=300, pattern="gpt4", special=[EOT])
    assert slow.engine() is None
    reference = slow.encode(text, allowed_special="all")
    assert fast.encode(text, allowed_special="all") == reference
    assert fast.encode_ordinary(text) == slow.encode_ordinary(text)
    assert fast.encode_array(text, allowed_special="all").tolist() == reference
    assert fast.encode_batch([text, "ab"], allowed_special="all") == [reference, slow.encode("ab")]
    chunks = list(chunk_text(text, size=4000))
    assert np.concatenate(list(fast.encode_chunks(chunks, "allow"))).tolist() == reference
    plain = np.concatenate(list(fast.encode_chunks(chunks))).tolist()
    assert plain == slow.encode_ordinary(text)
    with pytest.raises(TokenizerError, match="special token"):
        fast.encode(text)
    for tok in (fast, slow):
        with pytest.raises(TokenizerError, match="lone surrogate"):
            tok.encode("a\udc80")
