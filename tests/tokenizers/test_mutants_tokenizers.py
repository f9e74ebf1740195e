"""Tokenizer behaviour that mutation testing found unchecked: the base class's defaults (used by
tokenizer kinds that do not override them), word-vocabulary limits and options, and the heap
merge of long BPE pieces."""

import itertools
import random
from typing import Any

import numpy as np
import pytest

from lmforge.errors import TokenizerError
from lmforge.tokenizers import BPETokenizer, CharTokenizer, WordTokenizer
from lmforge.tokenizers.base import Tokenizer, tokenizer_from_dict, tokenizer_kinds


class ByteTokenizer(Tokenizer):
    """UTF-8 bytes as tokens, relying on every default of the base class."""

    kind = "bytes"

    @property
    def vocab_size(self) -> int:
        return 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids) -> str:
        return bytes(ids).decode("utf-8", errors="replace")

    def id_to_token(self, index: int) -> str:
        return self.decode([index])

    def _fields(self) -> dict[str, Any]:
        return {}

    @classmethod
    def _from_fields(cls, fields: dict[str, Any]) -> "ByteTokenizer":
        return cls()


def test_the_default_stream_decoder_holds_back_incomplete_characters():
    tok = ByteTokenizer()
    decoder = tok.stream_decoder()
    pieces = [decoder.push(b) for b in "a漢字b".encode()]
    assert pieces == ["a", "", "", "漢", "", "", "字", "b"]
    assert decoder.flush() == ""
    decoder = tok.stream_decoder()
    assert [decoder.push(b) for b in "é漢".encode()[:3]] == ["", "é", ""]
    assert decoder.flush() == "\ufffd"  # the incomplete tail, shown as what decode() gives
    assert decoder.flush() == ""


def test_the_base_class_defaults():
    tok = ByteTokenizer()
    array = tok.encode_array("aé")
    assert array.dtype == np.uint16
    assert array.tolist() == [0x61, 0xC3, 0xA9]
    assert tok.token_bytes(0x61) == b"a"
    assert repr(tok) == "ByteTokenizer(vocab_size=256)"
    assert tok == ByteTokenizer()
    assert hash(tok) == hash(ByteTokenizer())
    assert CharTokenizer.train("ab") != CharTokenizer.train("abc")
    assert CharTokenizer.train("ab") != tok
    assert CharTokenizer.train("ab").stream_decoder().flush() == ""
    assert tokenizer_kinds() == ["bpe", "char", "hf", "word"]


def test_whitespace_split_is_kept_by_training_and_saving():
    tok = WordTokenizer.train("Don't stop, now", split="whitespace")
    assert tok.tokens == ["Don't", "stop,", "now"]
    again = tokenizer_from_dict(tok.to_dict())
    assert again.split == "whitespace"
    assert again.encode("now stop,") == [2, 1]


@pytest.mark.parametrize(
    ("max_vocab", "tokens"),
    [
        (2, ["d", "<unk>"]),
        (3, ["d", "c", "<unk>"]),
        (4, ["d", "c", "b", "<unk>"]),  # b ties with a and e but came first
        (5, ["d", "c", "b", "a", "e"]),  # everything fits: no <unk>
    ],
)
def test_max_vocab_keeps_the_most_frequent_words(max_vocab, tokens):
    assert WordTokenizer.train("d c b a e d c d", max_vocab=max_vocab).tokens == tokens


def test_word_ids_are_stored_in_16_bits():
    ids = WordTokenizer.train("a b a").encode_array("b a")
    assert (ids.dtype, ids.tolist()) == (np.dtype(np.uint16), [1, 0])


def test_max_vocab_below_two_is_refused():
    with pytest.raises(TokenizerError, match="max_vocab must be at least 2"):
        WordTokenizer.train("a b", max_vocab=1)


def test_unknown_word_of_a_lowercasing_tokenizer_is_named_with_its_position():
    tok = WordTokenizer.train("hello world", lowercase=True)
    assert tok.encode("Hello WORLD") == [0, 1]
    with pytest.raises(TokenizerError, match=r"token 'there' \(at character 6\)"):
        tok.encode("Hello THERE")


def naive_merge(data: bytes, merges: list[tuple[int, int]]) -> list[int]:
    """Reference BPE: merge every occurrence of the earliest-learned pair present, left to
    right, until no learned pair is left."""
    rank = {pair: 256 + k for k, pair in enumerate(merges)}
    ids = list(data)
    while True:
        present = [rank[p] for p in itertools.pairwise(ids) if p in rank]
        if not present:
            return ids
        new = min(present)
        pair = merges[new - 256]
        out, i = [], 0
        while i < len(ids):
            if i + 1 < len(ids) and (ids[i], ids[i + 1]) == pair:
                out.append(new)
                i += 2
            else:
                out.append(ids[i])
                i += 1
        ids = out


@pytest.mark.parametrize("seed", range(3))
def test_long_pieces_merge_like_the_reference(seed):
    """Pieces of 256 bytes and more take the heap merge; it must agree with the plain one,
    including merges at the first position and of byte 0."""
    rng = random.Random(seed)
    alphabet = [0, 1, 2, 97]
    merges = [(0, 1), (256, 2), (97, 0), (257, 257), (1, 2), (2, 0), (0, 0), (258, 1)]
    tok = BPETokenizer(merges)
    for length in (300, 257, 600):
        data = bytes(rng.choice(alphabet) for _ in range(length))
        assert tok.merge_bytes(data) == naive_merge(data, merges)
    data = bytes([0, 1, 2, 0, 1, 2] * 60)
    assert tok.merge_bytes(data) == naive_merge(data, merges)
    assert tok.merge_bytes(bytes(300)) == naive_merge(bytes(300), merges)
