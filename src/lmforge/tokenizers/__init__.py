"""Tokenizers: character-level, word-level, byte-pair encoding and Hugging Face
``tokenizer.json`` files (kind ``hf``), behind one interface.

>>> from lmforge.tokenizers import load_tokenizer
>>> tok = load_tokenizer("runs/x/tokenizer.json")
>>> tok.decode(tok.encode("To be")) == "To be"
True
"""

from lmforge.tokenizers.base import (
    Tokenizer,
    load_tokenizer,
    token_dtype,
    tokenizer_from_dict,
    tokenizer_kinds,
    train_tokenizer,
)
from lmforge.tokenizers.bpe import BPETokenizer
from lmforge.tokenizers.char import CharTokenizer
from lmforge.tokenizers.hf import HFTokenizer, load_hf_tokenizer
from lmforge.tokenizers.word import WordTokenizer

__all__ = [
    "BPETokenizer",
    "CharTokenizer",
    "HFTokenizer",
    "Tokenizer",
    "WordTokenizer",
    "load_hf_tokenizer",
    "load_tokenizer",
    "token_dtype",
    "tokenizer_from_dict",
    "tokenizer_kinds",
    "train_tokenizer",
]
