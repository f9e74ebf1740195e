"""Byte-level BPE: training (exact merges, tie-breaking), encoding, decoding, specials, files."""

import json
from collections import Counter
from itertools import pairwise

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmforge.data.stream import chunk_text
from lmforge.errors import TokenizerError
from lmforge.tokenizers import BPETokenizer, load_tokenizer, train_tokenizer
from lmforge.tokenizers.bpe import count_pieces, learn_merges
from lmforge.tokenizers.bpe_merges import merge_long
from lmforge.tokenizers.pretokenize import Splitter
from tests.conftest import markov_text

EOT = "<|endoftext|>"
# Text with everything byte-level BPE must survive: emoji (4-byte, ZWJ sequences), combining
# marks, CJK, control characters, \r\n, tabs, non-breaking and ideographic spaces.
HARD_TEXT = (
    "Hello, world! It's 2024... naïve café (e\u0301) 漢字かな 😀👍🏽 👩‍👩‍👧\r\n"
    "\tTabs\x00\x07\x1b[0m  and   spaces\u00a0\u3000end\n\n"
)


def pieces_of(alphabet: list[str], max_size: int) -> st.SearchStrategy[str]:
    """Texts made of the strings in ``alphabet`` (which may be longer than one character)."""
    return st.lists(st.sampled_from(alphabet), max_size=max_size).map("".join)


def replace_pair(ids: list[int], pair: tuple[int, int], new: int) -> list[int]:
    """Every occurrence of ``pair`` in ``ids``, left to right, replaced by ``new``."""
    out: list[int] = []
    skip = False
    for current, following in zip(ids, [*ids[1:], None], strict=True):
        if skip:
            skip = False
        elif (current, following) == pair:
            out.append(new)
            skip = True
        else:
            out.append(current)
    return out


def reference_merges(words: dict[bytes, int], num_merges: int, min_frequency: int = 1):
    """minbpe's algorithm on counted words: recount every pair before each merge; highest
    count first, ties to the smallest (left, right) pair."""
    seqs = {w: list(w) for w in words}
    merges = []
    while len(merges) < num_merges:
        counts: Counter = Counter()
        for w, ids in seqs.items():
            for pair in pairwise(ids):
                counts[pair] += words[w]
        if not counts:
            break
        best = min(counts, key=lambda p: (-counts[p], p))
        if counts[best] < min_frequency:
            break
        merges.append(best)
        seqs = {w: replace_pair(ids, best, 255 + len(merges)) for w, ids in seqs.items()}
    return merges


@pytest.fixture(scope="module", autouse=True)
def python_engine():
    """These tests check the pure-Python encoder, the reference (test_engines.py checks that
    tiktoken gives the same ids)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LMFORGE_BPE_ENGINE", "python")
        yield


@pytest.fixture(scope="module")
def hard_tok():
    text = markov_text(20_000, alphabet="ab c\n") + HARD_TEXT * 20
    return BPETokenizer.train(text, vocab_size=400, pattern="gpt4", special=[EOT])


# --- training -------------------------------------------------------------------------------


def test_wikipedia_example_merges_and_ids():
    tok = BPETokenizer.train("aaabdaaabac", vocab_size=259, pattern="none")
    # aa (4 times) first; then ab and (aa, a) tie at 2: the smaller pair (97, 98) wins.
    assert tok.merges == [(97, 97), (97, 98), (256, 257)]
    assert [tok.token_bytes(i) for i in (256, 257, 258)] == [b"aa", b"ab", b"aaab"]
    assert tok.encode("aaabdaaabac") == [258, 100, 258, 97, 99]


def test_ties_go_to_the_smallest_pair_of_ids():
    # Every pair occurs once: (a, b) < (b, c) < (c, d) ...
    assert learn_merges({b"dcba": 1, b"abcd": 1}, 1) == [(97, 98)]
    # Counts beat order: (c, d) occurs twice.
    assert learn_merges({b"abcd": 1, b"cd": 1}, 1) == [(99, 100)]
    # Words are weighted by their counts.
    assert learn_merges({b"xy": 5, b"ab": 4, b"ba": 2}, 3) == [(120, 121), (97, 98), (98, 97)]


def test_overlapping_pairs_merge_left_to_right():
    # 'aaaa' has (a, a) three times; merging leaves [aa, aa], whose pair is then merged.
    assert learn_merges({b"aaaa": 1}, 5) == [(97, 97), (256, 256)]
    assert learn_merges({b"aaa": 3}, 5) == [(97, 97), (256, 97)]


@settings(max_examples=150, deadline=None)
@given(
    words=st.dictionaries(
        st.binary(min_size=1, max_size=12).map(lambda b: bytes(97 + x % 3 for x in b)),
        st.integers(1, 5),
        min_size=1,
        max_size=12,
    ),
    num_merges=st.integers(0, 25),
    min_frequency=st.integers(1, 4),
)
def test_incremental_trainer_equals_recounting_every_merge(words, num_merges, min_frequency):
    assert learn_merges(words, num_merges, min_frequency) == reference_merges(
        words, num_merges, min_frequency
    )


def test_trainer_equals_reference_on_real_text():
    text = open_corpus_slice()
    words = {w.encode(): c for w, c in count_pieces(text, "gpt2").items()}
    assert learn_merges(words, 60) == reference_merges(words, 60)


def open_corpus_slice() -> str:
    from lmforge.data.corpora import resolve_corpus

    try:
        return resolve_corpus("tinyshakespeare").read()[:20_000]
    except Exception:  # offline without the corpus: a synthetic text
        return markov_text(20_000, alphabet="abcde fgh\n")


def test_vocab_size_counts_bytes_merges_and_specials():
    tok = BPETokenizer.train(markov_text(5000), vocab_size=300, special=[EOT, "<pad>"])
    assert tok.vocab_size == 300
    assert len(tok.merges) == 42
    assert tok.special_tokens == {EOT: 298, "<pad>": 299}
    assert tok.id_to_token(298) == EOT


def test_min_frequency_stops_merging():
    tok = BPETokenizer.train("ab ab ab cd", vocab_size=1000, pattern="gpt2", min_frequency=2)
    # 'ab' x3 (incl. ' ab' x2), ' ab' x2; nothing else occurs twice.
    assert [tok.token_bytes(256 + k) for k in range(len(tok.merges))] == [b"ab", b" ab"]


def test_training_stops_when_no_pairs_are_left():
    tok = BPETokenizer.train("abc", vocab_size=1000, pattern="none")
    assert tok.merges == [(97, 98), (256, 99)] and tok.vocab_size == 258


def test_special_tokens_are_never_learned_from():
    text = f"hello{EOT}world{EOT}" * 50
    tok = BPETokenizer.train(text, vocab_size=300, pattern="none", special=[EOT])
    learned = {tok.token_bytes(256 + k) for k in range(len(tok.merges))}
    assert not any(b"<|" in t or b"|>" in t for t in learned)
    assert tok.encode(text, allowed_special="all").count(tok.special_tokens[EOT]) == 100


def test_training_is_deterministic():
    text = markov_text(10_000, seed=3)
    a = BPETokenizer.train(text, vocab_size=350)
    b = BPETokenizer.train(text, vocab_size=350)
    assert a == b and a.to_json() == b.to_json()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"vocab_size": 255}, r"vocabulary size 255 is too small.*at least 256"),
        ({"vocab_size": 256, "special": [EOT]}, r"256 byte tokens \+ 1 special.*at least 257"),
        ({"vocab_size": 300, "pattern": "(unclosed"}, r"invalid split pattern '\(unclosed'"),
        ({"vocab_size": 300, "pattern": r"\w*"}, "matches the empty string"),
        ({"vocab_size": 300, "special": ["a", "a"]}, "distinct"),
        ({"vocab_size": 300, "special": [""]}, "non-empty"),
        ({"vocab_size": 300, "min_frequency": 0}, "min_frequency must be at least 1"),
    ],
)
def test_bad_training_options_are_clear_errors(options, message):
    with pytest.raises(TokenizerError, match=message):
        BPETokenizer.train("some text", **options)


def test_empty_text_is_an_error():
    with pytest.raises(TokenizerError, match="empty text"):
        BPETokenizer.train("", vocab_size=300)


def test_train_tokenizer_passes_the_options():
    tok = train_tokenizer(
        "bpe", markov_text(3000), vocab_size=270, pattern="gpt2", special=[EOT], min_frequency=1
    )
    assert isinstance(tok, BPETokenizer) and tok.vocab_size == 270 and tok.pattern == "gpt2"


# --- encoding and decoding ------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_decode_encode_roundtrip_any_text(hard_tok, text):
    assert hard_tok.decode(hard_tok.encode_ordinary(text)) == text


@settings(max_examples=100, deadline=None)
@given(pieces_of([*HARD_TEXT, "\r\n", EOT], 80))
def test_roundtrip_hard_characters_and_specials(hard_tok, text):
    ids = hard_tok.encode(text, allowed_special="all")
    assert hard_tok.decode(ids) == text
    assert ids.count(hard_tok.special_tokens[EOT]) == text.count(EOT)


@pytest.mark.parametrize("pattern", ["gpt2", "gpt4", "none", r"\p{L}+|\d"])
def test_roundtrip_with_every_pattern(pattern):
    tok = BPETokenizer.train(HARD_TEXT * 5, vocab_size=320, pattern=pattern)
    assert tok.decode(tok.encode(HARD_TEXT)) == HARD_TEXT
    assert tok.decode(tok.encode("unseen ✓ text")) == "unseen ✓ text"


def test_a_custom_pattern_keeps_the_text_between_matches():
    assert Splitter(r"\d+").split("ab12cd3") == ["ab", "12", "cd", "3"]
    tok = BPETokenizer.train("ab12cd3" * 10, vocab_size=300, pattern=r"\d+")
    assert tok.decode(tok.encode("x12y")) == "x12y"


def test_merges_never_cross_pieces():
    tok = BPETokenizer.train("ab ab ab", vocab_size=300, pattern="gpt2")
    # ' ab' is a piece; 'b ' never becomes a token.
    assert all(b"b " not in tok.token_bytes(i) for i in range(tok.vocab_size))


def test_encoding_applies_merges_by_rank_not_greedily():
    # Merges: (b, c) first, then (a, b). 'abc' -> [a, bc], not [ab, c].
    tok = BPETokenizer([(98, 99), (97, 98)], pattern="none")
    assert tok.encode("abc") == [97, 256]
    assert tok.encode("abab") == [257, 257]


def simple_merge(ids: list[int], merges: list[tuple[int, int]]) -> list[int]:
    """Merge-order encoding as minbpe writes it: among the pairs present, take the one learned
    earliest and replace all its occurrences, until no learned pair is left."""
    rank = {pair: k for k, pair in enumerate(merges)}
    while True:
        present = [p for p in set(pairwise(ids)) if p in rank]
        if not present:
            return ids
        best = min(present, key=rank.__getitem__)
        ids = replace_pair(ids, best, 256 + rank[best])


@pytest.fixture(scope="module")
def ab_tok():
    return BPETokenizer.train("abbaab" * 30 + "ba" * 40 + "aaa", vocab_size=290, pattern="none")


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from([97, 98]), max_size=600))
def test_long_piece_heap_merging_equals_the_simple_loop(ab_tok, ids):
    expected = simple_merge(list(ids), ab_tok.merges)
    assert merge_long(list(ids), ab_tok._merge_ids) == expected
    assert ab_tok.encode(bytes(ids).decode()) == expected  # short or long path


def test_special_tokens_need_allowing():
    tok = BPETokenizer.train(markov_text(2000), vocab_size=280, special=[EOT])
    eot = tok.special_tokens[EOT]
    text = f"a b{EOT}c"
    with pytest.raises(TokenizerError, match=r"special token '<\|endoftext\|>' \(at character 3\)"):
        tok.encode(text)
    assert tok.encode(text, allowed_special="all")[-2] == eot
    assert tok.encode(text, allowed_special={EOT}) == tok.encode(text, allowed_special="all")
    plain = tok.encode(text, disallowed_special=())
    assert eot not in plain and plain == tok.encode_ordinary(text)
    assert tok.decode(plain) == text
    with pytest.raises(TokenizerError, match="not a special token"):
        tok.encode(text, allowed_special={"<nope>"})


def test_special_tokens_are_never_split():
    tok = BPETokenizer([], pattern="gpt4", special=[EOT, "<|end|>"])
    ids = tok.encode(f"x{EOT}<|end|>y", allowed_special="all")
    assert ids == [120, tok.special_tokens[EOT], tok.special_tokens["<|end|>"], 121]


def test_lone_surrogates_are_a_clear_error():
    tok = BPETokenizer([])
    with pytest.raises(TokenizerError, match="lone surrogate"):
        tok.encode("a\ud800b")


def test_encode_array_and_batch_agree_with_encode(hard_tok):
    texts = [HARD_TEXT, "abc", ""]
    arrays = [hard_tok.encode_array(t) for t in texts]
    assert [a.tolist() for a in arrays] == [hard_tok.encode(t) for t in texts]
    assert arrays[0].dtype == np.uint16
    assert hard_tok.encode_batch(texts) == [hard_tok.encode(t) for t in texts]


def test_decode_of_partial_characters_and_bad_ids():
    tok = BPETokenizer([])
    assert tok.decode([0xE2, 0x82]) == "\ufffd"
    with pytest.raises(TokenizerError, match="outside the vocabulary"):
        tok.decode([256])
    with pytest.raises(TokenizerError, match="outside the vocabulary"):
        tok.decode([-1])


def test_id_to_token_shows_partial_bytes():
    tok = BPETokenizer([(0xE2, 0x82)])
    assert tok.id_to_token(256) == "\\xe2\\x82"
    assert tok.id_to_token(ord("a")) == "a"


# --- streaming decode -----------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(pieces_of([*"ab €漢😀é", "e\u0301", "👩\u200d👧"], 60))
def test_stream_decoder_yields_valid_text_joining_to_decode(hard_tok, text):
    ids = hard_tok.encode(text)
    decoder = hard_tok.stream_decoder()
    pieces = [decoder.push(i) for i in ids] + [decoder.flush()]
    assert "".join(pieces) == hard_tok.decode(ids) == text
    assert all("\ufffd" not in p for p in pieces)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(0, 255), max_size=30))
def test_stream_decoder_on_arbitrary_bytes_matches_decode(ids):
    tok = BPETokenizer([])
    decoder = tok.stream_decoder()
    pieces = [decoder.push(i) for i in ids] + [decoder.flush()]
    assert "".join(pieces) == tok.decode(ids)


def test_stream_decoder_holds_back_an_incomplete_character():
    tok = BPETokenizer([])
    decoder = tok.stream_decoder()
    assert [decoder.push(b) for b in "😀".encode()] == ["", "", "", "😀"]
    assert decoder.push(0xF0) == "" and decoder.flush() == "\ufffd"


# --- the corpus path: chunks, processes -----------------------------------------------------


@pytest.mark.parametrize("pattern", ["gpt2", "gpt4"])
@settings(max_examples=60, deadline=None)
@given(
    text=pieces_of([*"ab'. \n\t\r1", "\r\n", " \n "], 300),
    size=st.integers(1, 40),
)
def test_chunks_encode_like_the_whole_text(pattern, text, size):
    splitter = Splitter(pattern)
    chunks = list(chunk_text(text, size=size))
    assert [p for c in chunks for p in splitter.split(c)] == splitter.split(text)


@pytest.mark.integration
def test_wikitext_lines_are_cut_and_encode_like_the_whole(tmp_path):
    from lmforge.data.corpora import resolve_corpus

    text = resolve_corpus("wikitext-2").read("val")
    chunks = list(chunk_text(text, size=50_000))
    assert len(chunks) > 10
    for pattern in ("gpt2", "gpt4"):
        splitter = Splitter(pattern)
        assert [p for c in chunks for p in splitter.split(c)] == splitter.split(text)


def test_encode_chunks_in_processes_equals_one_process():
    text = (markov_text(30_000, alphabet="ab c.\n") + "x" + EOT + "y\n") * 2
    tok = BPETokenizer.train(text, vocab_size=300, pattern="gpt2", special=[EOT])
    chunks = list(chunk_text(text, size=5000))
    assert len(chunks) > 4
    for mode, expected in (
        ("allow", tok.encode(text, allowed_special="all")),
        ("plain", tok.encode_ordinary(text)),
    ):
        serial = np.concatenate(list(tok.encode_chunks(chunks, mode, processes=1)))
        parallel = np.concatenate(list(tok.encode_chunks(chunks, mode, processes=2)))
        assert serial.tolist() == parallel.tolist() == expected


@pytest.mark.parametrize("pattern", ["none", r"[^\n]+"])
def test_encode_chunks_joins_the_text_when_lines_may_merge(pattern):
    text = "ab\ncd\n" * 50
    tok = BPETokenizer.train(text, vocab_size=270, pattern=pattern)
    chunks = list(chunk_text(text, size=20))
    arrays = list(tok.encode_chunks(chunks))
    assert len(arrays) == len(chunks)
    assert np.concatenate(arrays).tolist() == tok.encode(text)


def test_encode_chunks_reads_special_text_as_plain_unless_allowed():
    tok = BPETokenizer([], special=[EOT])
    chunks = [f"a{EOT}b"]
    plain = next(tok.encode_chunks(chunks))
    assert plain.tolist() == list(chunks[0].encode())
    assert next(tok.encode_chunks(chunks, "allow")).tolist() == [97, 256, 98]
    with pytest.raises(TokenizerError, match="special token"):
        list(tok.encode_chunks(chunks, "error"))
    with pytest.raises(TokenizerError, match="special-text mode"):
        list(tok.encode_chunks(chunks, "sometimes"))


# --- the file format ------------------------------------------------------------------------


def test_save_load_roundtrip(tmp_path, hard_tok):
    path = tmp_path / "tok.json"
    hard_tok.save(path)
    loaded = load_tokenizer(path)
    assert loaded == hard_tok and loaded.to_json() == hard_tok.to_json()
    assert loaded.encode(HARD_TEXT) == hard_tok.encode(HARD_TEXT)
    data = json.loads(path.read_text())
    assert data["kind"] == "bpe" and data["pattern"] == "gpt4" and data["special"] == [EOT]
    assert data["merges"][0] == list(hard_tok.merges[0])


def test_custom_pattern_survives_saving(tmp_path):
    tok = BPETokenizer.train("ab12cd3" * 10, vocab_size=260, pattern=r"\d+|\p{L}+")
    tok.save(tmp_path / "t.json")
    assert load_tokenizer(tmp_path / "t.json").pattern == r"\d+|\p{L}+"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"merges": [[97, 300]]}, r"merge 0 is \[97, 300\]"),
        ({"merges": [[97, 98], [97, 98]]}, "repeat a pair"),
        ({"merges": "nope"}, "list of"),
        ({"pattern": "(bad"}, "invalid split pattern"),
        ({"special": ["x", "x"]}, "distinct"),
        ({"extra": 1}, "unknown fields"),
        ({"version": 2}, "version 2"),
        ({"format": "other"}, "not an lmforge tokenizer"),
    ],
)
def test_damaged_or_foreign_files_are_clear_errors(tmp_path, change, message):
    data = {"format": "lmforge-tokenizer", "version": 1, "kind": "bpe", "pattern": "gpt4"}
    data |= {"merges": [[97, 98]], "special": []} | change
    path = tmp_path / "tok.json"
    path.write_text(json.dumps(data))
    with pytest.raises(TokenizerError, match=message):
        load_tokenizer(path)


def test_pickling_keeps_the_tokenizer():
    import pickle

    tok = BPETokenizer([(97, 98)], pattern="gpt2", special=[EOT])
    assert pickle.loads(pickle.dumps(tok)) == tok
