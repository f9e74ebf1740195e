"""Export to Hugging Face: a ``tokenizer.json`` that ``tokenizers`` and ``transformers`` load
and that encodes text to exactly lmforge's ids.

Every kind is covered:

- ``bpe``: a byte-level ``BPE`` model (GPT-2's byte → character mapping), the split pattern as a
  ``Split`` pre-tokenizer ("isolated", as lmforge keeps the text between matches), the merges in
  rank order, the special tokens as added tokens, a ``ByteLevel`` decoder.
- ``char``: a ``WordLevel`` model over single characters (each code point is a piece), decoded
  by concatenation.
- ``word``: a ``WordLevel`` model over lmforge's word pattern (with ``\\w`` and ``\\s`` spelled
  out as Python understands them), lowercasing when the tokenizer does, and a decoder that
  reproduces lmforge's spacing: single spaces between tokens, none before closing punctuation
  or after opening brackets and none around line breaks (``whitespace`` split: only around line
  breaks).

Writing needs nothing but the standard library; ``tokenizers`` is only needed to load the file.

>>> export_hf(load_tokenizer("tok.json"), "tokenizer.json")
>>> save_hf_tokenizer_dir(tok, "hf/")      # + tokenizer_config.json, special_tokens_map.json
>>> AutoTokenizer.from_pretrained("hf/")("To be")["input_ids"] == tok.encode("To be")
True
"""

from __future__ import annotations

import json
import os
import sys
from functools import cache
from pathlib import Path
from typing import Any

from lmforge.errors import TokenizerError
from lmforge.fileio import atomic_write_text
from lmforge.tokenizers.base import UNK, Tokenizer
from lmforge.tokenizers.pretokenize import NO_SPLIT, PATTERNS

HF_TOKENIZER_FILE = "tokenizer.json"
HF_CONFIG_FILE = "tokenizer_config.json"
HF_SPECIAL_MAP_FILE = "special_tokens_map.json"
_CLOSING = ".,;:!?)]}"  # word tokens with no space before them (see lmforge.tokenizers.word)
_OPENING = "([{"  # word tokens with no space after them


@cache
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte → printable character map used by byte-level BPE files: the
    printable Latin-1 bytes stand for themselves, the others are shifted past U+0100.

    >>> m = bytes_to_unicode(); m[ord("a")], m[ord(" ")], m[ord("\\n")]
    ('a', 'Ġ', 'Ċ')
    """
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    mapping = {b: chr(b) for b in printable}
    shifted = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + shifted)
            shifted += 1
    return dict(sorted(mapping.items()))


def byte_level_token(data: bytes) -> str:
    """The text a byte-level BPE file uses for a token's bytes.

    >>> byte_level_token(" the".encode())
    'Ġthe'
    """
    table = bytes_to_unicode()
    return "".join(table[b] for b in data)


def hf_tokenizer_dict(tokenizer: Tokenizer) -> dict[str, Any]:
    """The ``tokenizer.json`` content for ``tokenizer`` (a ``bpe``, ``char`` or ``word`` one;
    an ``hf`` one gives back the file it was made from)."""
    builders = {"bpe": _bpe_dict, "char": _char_dict, "word": _word_dict, "hf": _hf_dict}
    if tokenizer.kind not in builders:
        raise TokenizerError(
            f"cannot export a {tokenizer.kind!r} tokenizer to Hugging Face; "
            f"supported kinds: {', '.join(builders)}"
        )
    return builders[tokenizer.kind](tokenizer)


def export_hf(tokenizer: Tokenizer, path: str | os.PathLike[str]) -> Path:
    """Write ``tokenizer`` as a Hugging Face ``tokenizer.json`` (atomically); returns the path.
    A directory as ``path`` gets ``tokenizer.json`` inside it."""
    target = Path(path)
    if target.is_dir():
        target = target / HF_TOKENIZER_FILE
    text = json.dumps(hf_tokenizer_dict(tokenizer), ensure_ascii=False, indent=1)
    atomic_write_text(target, text + "\n")
    return target


def save_hf_tokenizer_dir(
    tokenizer: Tokenizer, out_dir: str | os.PathLike[str], model_max_length: int | None = None
) -> Path:
    """Write what ``transformers.AutoTokenizer.from_pretrained(out_dir)`` needs: the
    ``tokenizer.json``, a ``tokenizer_config.json`` (a ``PreTrainedTokenizerFast``, no
    clean-up of spaces, ``model_max_length``) and ``special_tokens_map.json``.

    ``<|endoftext|>``, when it is a special token, is the beginning- and end-of-text token (as
    in GPT-2); ``<unk>`` of a word tokenizer is the unknown token. Returns ``out_dir``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    export_hf(tokenizer, out / HF_TOKENIZER_FILE)
    roles = _special_roles(tokenizer)
    config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "clean_up_tokenization_spaces": False,
        "model_max_length": model_max_length if model_max_length is not None else 10**30,
        **roles,
    }
    if tokenizer.kind == "bpe":
        special = tokenizer.special_tokens  # type: ignore[attr-defined]
        config["added_tokens_decoder"] = {
            str(i): {k: v for k, v in _added_token(s, i).items() if k != "id"}
            for s, i in special.items()
        }
        extra = [s for s in special if s not in roles.values()]
        if extra:
            config["additional_special_tokens"] = extra
    special_map = dict(roles)
    atomic_write_text(out / HF_CONFIG_FILE, json.dumps(config, ensure_ascii=False, indent=1))
    atomic_write_text(
        out / HF_SPECIAL_MAP_FILE, json.dumps(special_map, ensure_ascii=False, indent=1)
    )
    return out


def _special_roles(tokenizer: Tokenizer) -> dict[str, str]:
    if tokenizer.kind == "bpe":
        special = tokenizer.special_tokens  # type: ignore[attr-defined]
        if "<|endoftext|>" in special:
            return {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>"}
        return {}
    if tokenizer.kind == "word" and tokenizer.unk_id is not None:  # type: ignore[attr-defined]
        return {"unk_token": UNK}
    if tokenizer.kind == "hf":
        bos, eos = tokenizer.bos_token, tokenizer.eos_token  # type: ignore[attr-defined]
        return {role: t for role, t in (("bos_token", bos), ("eos_token", eos)) if t is not None}
    return {}


def _hf_dict(tokenizer: Tokenizer) -> dict[str, Any]:
    return tokenizer.spec  # type: ignore[attr-defined]


# --- the three kinds --------------------------------------------------------------------------


def _skeleton(model: dict[str, Any], pre_tokenizer: Any, decoder: Any) -> dict[str, Any]:
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [],
        "normalizer": None,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": None,
        "decoder": decoder,
        "model": model,
    }


def _split(pattern: str, keep_gaps: bool) -> dict[str, Any]:
    """A ``Split`` pre-tokenizer: with ``keep_gaps`` the text between matches is kept as pieces
    ("isolated"), else it is dropped (matches kept, the rest removed)."""
    if keep_gaps:
        return {
            "type": "Split",
            "pattern": {"Regex": pattern},
            "behavior": "Isolated",
            "invert": False,
        }
    return {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Removed", "invert": True}


def _added_token(content: str, index: int) -> dict[str, Any]:
    return {
        "id": index,
        "content": content,
        "single_word": False,
        "lstrip": False,
        "rstrip": False,
        "normalized": False,
        "special": True,
    }


def _bpe_dict(tokenizer: Any) -> dict[str, Any]:
    if not tokenizer.has_unique_tokens():
        raise TokenizerError(
            "two tokens of this BPE vocabulary stand for the same bytes, which a Hugging Face "
            "vocabulary cannot hold; re-train the tokenizer"
        )
    n_merged = 256 + len(tokenizer.merges)
    names = [byte_level_token(tokenizer.token_bytes(i)) for i in range(n_merged)]
    vocab = {name: i for i, name in enumerate(names)}
    for special, index in tokenizer.special_tokens.items():
        if special in vocab:
            raise TokenizerError(
                f"special token {special!r} has the same text as token {vocab[special]} in a "
                "byte-level file; rename the special token"
            )
        vocab[special] = index
    byte_level = {
        "type": "ByteLevel",
        "add_prefix_space": False,
        "trim_offsets": False,
        "use_regex": False,
    }
    if tokenizer.pattern == NO_SPLIT:
        pre_tokenizer: dict[str, Any] = byte_level
    else:
        regex = PATTERNS.get(tokenizer.pattern, tokenizer.pattern)
        pre_tokenizer = {
            "type": "Sequence",
            "pretokenizers": [_split(regex, keep_gaps=True), byte_level],
        }
    model = {
        "type": "BPE",
        "dropout": None,
        "unk_token": None,
        "continuing_subword_prefix": None,
        "end_of_word_suffix": None,
        "fuse_unk": False,
        "byte_fallback": False,
        "ignore_merges": False,
        "vocab": vocab,
        "merges": [f"{names[a]} {names[b]}" for a, b in tokenizer.merges],
    }
    data = _skeleton(model, pre_tokenizer, {**byte_level, "trim_offsets": True})
    data["added_tokens"] = [_added_token(s, i) for s, i in tokenizer.special_tokens.items()]
    return data


def _word_level(vocab: dict[str, int]) -> dict[str, Any]:
    return {"type": "WordLevel", "vocab": vocab, "unk_token": UNK}


def _char_dict(tokenizer: Any) -> dict[str, Any]:
    vocab = dict(tokenizer.vocab)
    if tokenizer.unk_id is not None:
        vocab[UNK] = tokenizer.unk_id
    return _skeleton(
        _word_level(vocab),
        _split(r"[\s\S]", keep_gaps=True),  # every code point is a piece
        {"type": "Fuse"},
    )


def _word_dict(tokenizer: Any) -> dict[str, Any]:
    data = _skeleton(
        _word_level(dict(tokenizer.vocab)),
        _split(_portable_word_pattern(tokenizer.split), keep_gaps=False),
        _word_decoder(tokenizer.split),
    )
    if tokenizer.lowercase:
        data["normalizer"] = {"type": "Lowercase"}
    return data


def _word_decoder(split: str) -> dict[str, Any]:
    """Tokens joined as lmforge's word tokenizer joins them: a space before every token except
    closing punctuation (``words`` split) and line breaks; no space after an opening bracket
    (``words`` split) or a line break; none at the start."""
    glued_before = "\n" + (_CLOSING if split == "words" else "")
    steps: list[dict[str, Any]] = [
        {
            "type": "Replace",
            "pattern": {"Regex": f"^(?![{_class_escape(glued_before)}])"},
            "content": " ",
        },
        {"type": "Fuse"},
        {"type": "Replace", "pattern": {"String": "\n "}, "content": "\n"},
    ]
    if split == "words":
        steps += [
            {"type": "Replace", "pattern": {"String": f"{c} "}, "content": c} for c in _OPENING
        ]
    steps.append({"type": "Strip", "content": " ", "start": 1, "stop": 0})
    return {"type": "Sequence", "decoders": steps}


def _portable_word_pattern(split: str) -> str:
    """lmforge's word pattern with ``\\w`` and ``\\s`` spelled out as Python's ``re`` reads
    them (Oniguruma, which Hugging Face uses, gives both other meanings)."""
    space = _python_whitespace_class()
    word = r"\p{L}\p{N}_"
    if split == "whitespace":
        return f"[^{space}]+|\\n"
    return f"<[^<>{space}]+>|[{word}]+(?:['’][{word}]+)*|[^{word}{space}]|\\n"


@cache
def _python_whitespace_class() -> str:
    """The characters ``str.isspace()`` accepts, escaped for a regex character class."""
    return "".join(_class_escape(chr(c)) for c in range(sys.maxunicode + 1) if chr(c).isspace())


def _class_escape(chars: str) -> str:
    return "".join(f"\\x{{{ord(c):x}}}" if not c.isalnum() else c for c in chars)
