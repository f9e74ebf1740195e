"""Hugging Face tokenizers (kind ``hf``): a model's own ``tokenizer.json``, through the
``tokenizers`` library, so a pretrained model gets exactly the ids it was trained on.

Any ``tokenizer.json`` works: byte-level BPE (GPT-2, Llama 3, Qwen2, SmolLM) and
SentencePiece-style BPE with byte fallback (Llama 2, TinyLlama) alike.

>>> tok = load_hf_tokenizer("models/TinyLlama")    # tokenizer.json + tokenizer_config.json
>>> tok.encode("Hello")                            # BOS first, as AutoTokenizer gives
[1, 15043]
>>> tok.decode(tok.encode("Hello"))                # the BOS that encode added is dropped
'Hello'

**Special tokens.** ``encode`` gives what ``AutoTokenizer.from_pretrained(dir)(text)
["input_ids"]`` gives: the ``post_processor`` of ``tokenizer.json`` decides whether a BOS (or
EOS) is added, as transformers 5 does (it ignores ``add_bos_token`` of
``tokenizer_config.json`` whenever a ``tokenizer.json`` exists), and special-token text in
the input becomes the special id. :meth:`HFTokenizer.encode_continuation` adds nothing, for
text that continues a sequence. The names of the BOS and EOS tokens come from
``tokenizer_config.json`` (or ``special_tokens_map.json``).

**File.** lmforge's tokenizer file embeds the whole Hugging Face JSON::

    {"format": "lmforge-tokenizer", "version": 1, "kind": "hf",
     "tokenizer": {...tokenizer.json...}, "bos_token": "<s>", "eos_token": "</s>"}
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lmforge.errors import TokenizerError
from lmforge.tokenizers.base import (
    Tokenizer,
    check_encodable,
    check_ids,
    register_tokenizer,
    special_text_options,
    token_dtype,
)
from lmforge.tokenizers.hf_fast import ByteLevelFastPath, byte_level_fast_path
from lmforge.tokenizers.pretokenize import PATTERNS, SpecialSplitter

HF_TOKENIZER_FILE = "tokenizer.json"
HF_CONFIG_FILES = ("tokenizer_config.json", "special_tokens_map.json")
_FIELDS = {"tokenizer", "bos_token", "eos_token"}
_BATCH = 16  # chunks encoded together by encode_chunks (the library spreads them on threads)
# Split regexes whose pieces never cross a chunk cut of lmforge.data.stream.chunk_text: GPT-2
# and GPT-4's (lmforge's own), Llama 3's and Qwen2's.
_SAFE_SPLITS = {
    *PATTERNS.values(),
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+",
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+",
}


@register_tokenizer
class HFTokenizer(Tokenizer):
    """A Hugging Face ``tokenizers.Tokenizer`` behind lmforge's interface.

    ``spec`` is the content of a ``tokenizer.json`` (a dict or its JSON text); ``bos_token``
    and ``eos_token`` name the model's BOS and EOS tokens (``None`` when it has none).
    """

    kind = "hf"

    def __init__(
        self,
        spec: dict[str, Any] | str,
        bos_token: str | None = None,
        eos_token: str | None = None,
    ) -> None:
        from tokenizers import Tokenizer as Backend

        text = spec if isinstance(spec, str) else json.dumps(spec, ensure_ascii=False)
        try:
            self._backend = Backend.from_str(text)
        except Exception as exc:  # the library raises plain Exceptions for bad JSON
            first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise TokenizerError(
                f"the Hugging Face tokenizer JSON cannot be read ({first_line}); "
                "take tokenizer.json from the model folder again"
            ) from None
        # AutoTokenizer(text) neither truncates nor pads, whatever tokenizer.json says.
        self._backend.no_truncation()
        self._backend.no_padding()
        self.spec: dict[str, Any] = json.loads(self._backend.to_str())
        self.bos_token = bos_token
        self.eos_token = eos_token
        self.bos_id = self._token_id(bos_token, "BOS")
        self.eos_id = self._token_id(eos_token, "EOS")
        vocab = self._backend.get_vocab(with_added_tokens=True)
        self._vocab_size = max(vocab.values(), default=-1) + 1
        self.special = sorted(t["content"] for t in self.spec["added_tokens"] if t["special"])
        self._added = frozenset(t["content"] for t in self.spec["added_tokens"])
        self._added_plain = self._added - set(self.special)  # still matched in "plain" mode
        self._special_ids = {vocab[s] for s in self.special}
        self._prefix, self._suffix = self._added_ids()
        self.byte_fallback_ids = self._byte_fallback_ids()
        self._plain: Any = None
        self._fast: ByteLevelFastPath | None = None
        self._fast_checked = False
        self._byte_table: dict[str, int] | None = None

    @classmethod
    def train(cls, text: Any, **options: Any) -> HFTokenizer:
        """Not possible: an ``hf`` tokenizer is a pretrained model's own."""
        raise TokenizerError(
            "a tokenizer of kind hf is not trained; load a model's own with "
            "load_hf_tokenizer(DIR), or make a run from it with `lmforge import DIR --out RUN`"
        )

    def _token_id(self, token: str | None, role: str) -> int | None:
        if token is None:
            return None
        index = self._backend.token_to_id(token)
        if index is None:
            raise TokenizerError(
                f"the {role} token {token!r} is not in the tokenizer's vocabulary; "
                "fix bos_token/eos_token in tokenizer_config.json"
            )
        return index

    def _byte_fallback_ids(self) -> frozenset[int]:
        """The ids of the byte tokens ``<0x00>..<0xFF>`` of a byte-fallback decoder."""
        if not self._decoder_has("ByteFallback"):
            return frozenset()
        ids = (self._backend.token_to_id(f"<0x{b:02X}>") for b in range(256))
        return frozenset(i for i in ids if i is not None)

    def _added_ids(self) -> tuple[list[int], list[int]]:
        """The ids the post-processor puts before and after a text's own."""
        for probe in ("a", "0", " ", "\n"):
            bare = self._backend.encode(probe, add_special_tokens=False).ids
            if bare:
                break
        full = self._backend.encode(probe, add_special_tokens=True).ids
        for start in range(len(full) - len(bare) + 1):
            if full[start : start + len(bare)] == bare:
                return full[:start], full[start + len(bare) :]
        return [], []

    # -- the vocabulary

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    @property
    def add_bos(self) -> bool:
        """Whether ``encode`` starts every text with the BOS token."""
        return self.bos_id is not None and self._prefix[:1] == [self.bos_id]

    @property
    def add_eos(self) -> bool:
        """Whether ``encode`` ends every text with the EOS token."""
        return self.eos_id is not None and self._suffix[-1:] == [self.eos_id]

    def token_bytes(self, index: int) -> bytes:
        """The UTF-8 bytes the token stands for (a special token: its text). A byte-level
        token's characters map back to bytes, ``▁`` is a space, ``<0xE2>`` is one byte.

        >>> tok.token_bytes(tok.encode_continuation(" the")[0])   # GPT-2's 'Ġthe'
        b' the'
        """
        check_ids([index], self.vocab_size)
        token = self._backend.id_to_token(index)
        if token is None:
            return b""
        if index in self._special_ids:
            return token.encode("utf-8")
        if self._decoder_has("ByteLevel"):
            table = self._byte_decoder()
            if all(c in table for c in token):
                return bytes(table[c] for c in token)
        if self._decoder_has("ByteFallback") and len(token) == 6 and token.startswith("<0x"):
            try:
                return bytes([int(token[3:5], 16)])
            except ValueError:
                pass
        if self._decoder_has("Metaspace") or self._decoder_has("Replace", "\u2581"):
            return token.replace("\u2581", " ").encode("utf-8")
        return self.decode([index]).encode("utf-8")

    def id_to_token(self, index: int) -> str:
        """The token's text; bytes that are not whole UTF-8 characters are shown as ``\\xNN``."""
        return self.token_bytes(index).decode("utf-8", errors="backslashreplace")

    def _decoder_has(self, kind: str, pattern: str | None = None) -> bool:
        """Whether the decoder has a step of type ``kind`` (replacing ``pattern``, if given)."""
        decoder = self.spec.get("decoder") or {}
        parts = decoder.get("decoders", []) if decoder.get("type") == "Sequence" else [decoder]
        return any(
            part.get("type") == kind
            and (pattern is None or (part.get("pattern") or {}).get("String") == pattern)
            for part in parts
        )

    def _byte_decoder(self) -> dict[str, int]:
        if self._byte_table is None:
            from lmforge.tokenizers.export import bytes_to_unicode

            self._byte_table = {c: b for b, c in bytes_to_unicode().items()}
        return self._byte_table

    # -- encoding

    def encode(self, text: str) -> list[int]:
        """Text → ids, as the model's ``AutoTokenizer`` gives them: special tokens added as
        the tokenizer's post-processor says (BOS for Llama 2), special-token text → its id."""
        check_encodable(text)
        fast = self.fast_path()
        if fast is not None:
            return self._prefix + fast.encode(text, self._added) + self._suffix
        return self._backend.encode(text, add_special_tokens=True).ids

    def encode_continuation(self, text: str) -> list[int]:
        """Text → ids without the BOS/EOS that :meth:`encode` adds."""
        check_encodable(text)
        fast = self.fast_path()
        if fast is not None:
            return fast.encode(text, self._added)
        return self._backend.encode(text, add_special_tokens=False).ids

    def fast_path(self) -> ByteLevelFastPath | None:
        """lmforge's BPE encoder for a GPT-2-style tokenizer (same ids, faster), or ``None``
        (see :mod:`lmforge.tokenizers.hf_fast`). Chosen once, on first use."""
        if not self._fast_checked:
            self._fast = byte_level_fast_path(self.spec)
            self._fast_checked = True
        return self._fast

    def encode_array(self, text: str) -> np.ndarray:
        ids = self.encode(text)
        return np.fromiter(ids, dtype=token_dtype(self.vocab_size), count=len(ids))

    def encode_chunk(self, chunk: str, special_text: str = "plain") -> np.ndarray:
        """One chunk of a corpus → ids, without BOS/EOS; special-token text is plain text
        (``plain``, the library's ``encode_special_tokens``), the special id (``allow``) or
        an error (``error``)."""
        return self._encode_texts([chunk], special_text)[0]

    def encode_chunks(
        self, chunks: Iterable[str], special_text: str = "plain", processes: int = 1
    ) -> Iterator[np.ndarray]:
        """As :meth:`Tokenizer.encode_chunks`, a batch of chunks at a time on the library's
        own threads (``processes`` is not used). When chunks do not encode on their own (see
        :attr:`chunks_are_independent`) all ids come with the last chunk."""
        special_text_options(special_text)
        if not self.chunks_are_independent:
            chunks = list(chunks)
            for _ in chunks[:-1]:
                yield np.zeros(0, dtype=token_dtype(self.vocab_size))
            if chunks:
                yield self.encode_chunk("".join(chunks), special_text)
            return
        batch: list[str] = []
        for chunk in chunks:
            batch.append(chunk)
            if len(batch) == _BATCH:
                yield from self._encode_texts(batch, special_text)
                batch = []
        if batch:
            yield from self._encode_texts(batch, special_text)

    def _encode_texts(self, texts: list[str], special_text: str) -> list[np.ndarray]:
        special_text_options(special_text)
        for text in texts:
            check_encodable(text)
            if special_text == "error":
                self._refuse_special(text)
        dtype = token_dtype(self.vocab_size)
        fast = self.fast_path()
        if fast is not None:
            added = self._added_plain if special_text == "plain" else self._added
            return [np.asarray(fast.encode(text, added), dtype=dtype) for text in texts]
        backend = self._plain_backend() if special_text == "plain" else self._backend
        encodings = backend.encode_batch(texts, add_special_tokens=False)
        return [np.asarray(e.ids, dtype=dtype) for e in encodings]

    def _refuse_special(self, text: str) -> None:
        found = SpecialSplitter(self.special).find(text)
        if found is not None:
            token, position = found
            raise TokenizerError(
                f"the text contains the special token {token!r} (at character {position}); "
                "encode it as the special token (--special-text allow) or as plain text "
                "(--special-text plain)"
            )

    def _plain_backend(self) -> Any:
        """A copy of the library tokenizer that encodes special-token text as plain text."""
        if self._plain is None:
            from tokenizers import Tokenizer as Backend

            self._plain = Backend.from_str(self._backend.to_str())
            self._plain.encode_special_tokens = True
        return self._plain

    @property
    def chunks_are_independent(self) -> bool:
        """Whether chunks cut at line breaks encode to the ids of the whole text: true for
        byte-level BPE split like GPT-2, GPT-4, Llama 3 or Qwen2 (no normalizer but NFC, no
        prefix space); false otherwise (a SentencePiece-style ``▁`` prefix, say)."""
        normalizer = self.spec.get("normalizer")
        if normalizer is not None and normalizer.get("type") != "NFC":
            return False
        pre = self.spec.get("pre_tokenizer")
        if pre is None:
            return False
        parts = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
        return bool(parts) and all(_splits_at_line_cuts(part) for part in parts)

    # -- decoding

    def decode(self, ids: Iterable[int]) -> str:
        """Ids → text (special tokens as their text, but without the BOS that ``encode`` puts
        first); bytes that are not valid UTF-8 become U+FFFD."""
        ids = [int(i) for i in ids]
        check_ids(ids, self.vocab_size)
        if self.add_bos and ids[:1] == [self.bos_id]:
            ids = ids[1:]
        return self._backend.decode(ids, skip_special_tokens=False)

    def stream_decoder(self) -> HFStreamDecoder:
        return HFStreamDecoder(self)

    # -- the file format

    def _fields(self) -> dict[str, Any]:
        return {"tokenizer": self.spec, "bos_token": self.bos_token, "eos_token": self.eos_token}

    @classmethod
    def _from_fields(cls, fields: dict[str, Any]) -> HFTokenizer:
        unknown = set(fields) - _FIELDS
        if unknown:
            raise TokenizerError(
                f"the hf tokenizer description has unknown fields ({', '.join(sorted(unknown))});"
                " it was written by another program or version; re-create it"
            )
        spec = fields["tokenizer"]
        if not isinstance(spec, dict):
            raise TokenizerError("the hf tokenizer's 'tokenizer' field must be a JSON object")
        for role in ("bos_token", "eos_token"):
            if fields.get(role) is not None and not isinstance(fields[role], str):
                raise TokenizerError(f"the hf tokenizer's {role} must be a string or null")
        return cls(spec, fields.get("bos_token"), fields.get("eos_token"))

    def __repr__(self) -> str:
        return f"HFTokenizer(vocab_size={self.vocab_size}, bos={self.bos_token!r})"

    def __getstate__(self) -> dict[str, Any]:
        return self.to_dict()

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(  # type: ignore[misc]
            state["tokenizer"], state.get("bos_token"), state.get("eos_token")
        )


def _splits_at_line_cuts(part: dict[str, Any]) -> bool:
    """Whether a pre-tokenizer step never joins text across a chunk cut."""
    kind = part.get("type")
    if kind == "ByteLevel":
        return not part.get("add_prefix_space", False)
    if kind == "Digits":
        return True
    if kind == "Split":
        pattern = part.get("pattern") or {}
        return pattern.get("Regex") in _SAFE_SPLITS and part.get("behavior") == "Isolated"
    return False


class HFStreamDecoder:
    """Streaming decode for :class:`HFTokenizer`: the pieces join to exactly ``decode(ids)``,
    and a character whose bytes are split over byte-level tokens is held back until it is
    complete (or until ``flush``). Byte-fallback tokens such as ``<0xE2>`` are held until the
    next other token: the library decodes a run of them together, all U+FFFD when the run
    as a whole is not UTF-8, so a later byte can still change the text of earlier ones.

    It decodes a short window of recent tokens: the text of the window beyond the text of its
    tokens already emitted is the new text (as text-generation-inference does), so the cost
    per token does not grow with the length of the output.
    """

    def __init__(self, tokenizer: HFTokenizer) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.window = 0  # the window's first token
        self.emitted = 0  # the tokens whose text was returned
        self.length = 0  # the characters returned

    def push(self, token: int) -> str:
        """Add one token; return the text it completes."""
        tokenizer = self.tokenizer
        if not self.ids and tokenizer.add_bos and token == tokenizer.bos_id:
            self.window = self.emitted = 1  # decode drops the BOS that encode puts first
        self.ids.append(token)
        if token in tokenizer.byte_fallback_ids:
            return ""
        done = self._decode(self.ids[self.window : self.emitted])
        text = self._decode(self.ids[self.window :])
        if not text.startswith(done) or text.endswith("\ufffd"):
            return ""
        self.window, self.emitted = self.emitted, len(self.ids)
        self.length += len(text) - len(done)
        return text[len(done) :]

    def flush(self) -> str:
        """The text still held back (an incomplete character becomes U+FFFD)."""
        text = self.tokenizer.decode(self.ids)[self.length :]
        self.window = self.emitted = len(self.ids)
        self.length += len(text)
        return text

    def _decode(self, ids: Sequence[int]) -> str:
        check_ids(ids, self.tokenizer.vocab_size)
        return self.tokenizer._backend.decode(list(ids), skip_special_tokens=False)


def load_hf_tokenizer(directory: str | os.PathLike[str]) -> HFTokenizer:
    """The tokenizer of a Hugging Face model folder: ``tokenizer.json``, with the BOS and EOS
    names from ``tokenizer_config.json`` (or ``special_tokens_map.json``).

    >>> load_hf_tokenizer("models/gpt2").encode("Hello world")
    [15496, 995]
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise TokenizerError(f"{directory} is not a folder; give a Hugging Face model folder")
    path = directory / HF_TOKENIZER_FILE
    if not path.is_file():
        slow = [name for name in ("tokenizer.model", "vocab.json") if (directory / name).exists()]
        hint = (
            f" (it has only {slow[0]}: slow tokenizers are not supported; convert it with "
            "transformers: AutoTokenizer.from_pretrained(DIR).save_pretrained(DIR))"
            if slow
            else ""
        )
        raise TokenizerError(f"{directory} has no {HF_TOKENIZER_FILE}{hint}")
    spec = _read_json(path)
    names: dict[str, str | None] = {"bos_token": None, "eos_token": None}
    for config_name in reversed(HF_CONFIG_FILES):  # tokenizer_config.json wins
        config_path = directory / config_name
        if config_path.is_file():
            config = _read_json(config_path)
            for role in names:
                if role in config:
                    names[role] = _token_content(config[role])
    return HFTokenizer(spec, names["bos_token"], names["eos_token"])


def _token_content(value: Any) -> str | None:
    """A token named in tokenizer_config.json: a string, or an AddedToken dict."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TokenizerError(
            f"{path} is not valid JSON ({exc}); take it from the model again"
        ) from None
    if not isinstance(data, dict):
        raise TokenizerError(f"{path} is not a JSON object; take it from the model again")
    return data


__all__ = ["HFStreamDecoder", "HFTokenizer", "load_hf_tokenizer"]
