"""lmforge's own BPE encoding for a GPT-2-style Hugging Face ``tokenizer.json``.

A byte-level BPE split by GPT-2's regex (``ByteLevel`` pre-tokenizer, no normalizer, plain
merges) encodes to the same tokens with :class:`~lmforge.tokenizers.bpe.BPETokenizer` given
the same merges, several times faster (see BENCHMARKS.md); only the numbering differs, so ids
go through a table. :func:`byte_level_fast_path` builds it when the file qualifies, else gives
``None`` and the ``tokenizers`` library encodes. ``LMFORGE_HF_ENGINE=tokenizers`` turns it off.

>>> fast = byte_level_fast_path(json.load(open("gpt2/tokenizer.json")))
>>> fast.encode("Hello world", added={"<|endoftext|>"})
[15496, 995]
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from lmforge.tokenizers.bpe import BPETokenizer
from lmforge.tokenizers.pretokenize import SpecialSplitter

ENGINE_VARIABLE = "LMFORGE_HF_ENGINE"


class ByteLevelFastPath:
    """Encodes as the ``tokenizers`` library would, with lmforge's BPE and an id table.

    ``hf_ids[i]`` is the Hugging Face id of lmforge's token ``i``; ``added`` maps the added
    tokens' text to their ids (they are cut out of the text first, longest first, as the
    library does).
    """

    def __init__(self, bpe: BPETokenizer, hf_ids: np.ndarray, added: dict[str, int]) -> None:
        self.bpe = bpe
        self.hf_ids = hf_ids
        self.added = added
        self._splitters: dict[frozenset[str], SpecialSplitter] = {}

    def encode(self, text: str, added: set[str] | frozenset[str]) -> list[int]:
        """Text → Hugging Face ids, the ``added`` tokens found in the text becoming their ids
        (the others are plain text)."""
        if not added:
            return self._encode_plain(text)
        key = frozenset(added)
        if key not in self._splitters:
            self._splitters[key] = SpecialSplitter(key)
        ids: list[int] = []
        for i, segment in enumerate(self._splitters[key].split(text)):
            if i % 2:
                ids.append(self.added[segment])
            elif segment:
                ids.extend(self._encode_plain(segment))
        return ids

    def _encode_plain(self, text: str) -> list[int]:
        ids = self.bpe.encode_ordinary(text)
        return self.hf_ids[np.asarray(ids, dtype=np.int64)].tolist() if ids else []


def byte_level_fast_path(spec: dict[str, Any]) -> ByteLevelFastPath | None:
    """The fast path for a GPT-2-style ``tokenizer.json``, or ``None`` when the file is of
    another kind (or ``LMFORGE_HF_ENGINE=tokenizers``)."""
    if os.environ.get(ENGINE_VARIABLE, "auto") == "tokenizers" or not _qualifies(spec):
        return None
    from lmforge.tokenizers.export import bytes_to_unicode

    byte_of = {c: b for b, c in bytes_to_unicode().items()}

    def to_bytes(token: str) -> bytes | None:
        return bytes(byte_of[c] for c in token) if all(c in byte_of for c in token) else None

    lmforge_id = {bytes([b]): b for b in range(256)}
    merges: list[tuple[int, int]] = []
    for merge in spec["model"]["merges"]:
        left, right = merge if isinstance(merge, list) else merge.split(" ", 1)
        left_bytes, right_bytes = to_bytes(left), to_bytes(right)
        if left_bytes not in lmforge_id or right_bytes not in lmforge_id:
            return None
        joined = left_bytes + right_bytes  # type: ignore[operator]
        if joined in lmforge_id:
            return None  # two merges make one token: lmforge's numbering cannot hold that
        lmforge_id[joined] = 256 + len(merges)
        merges.append((lmforge_id[left_bytes], lmforge_id[right_bytes]))  # type: ignore[index]
    hf_ids = np.full(len(lmforge_id), -1, dtype=np.int64)
    for token, index in spec["model"]["vocab"].items():
        data = to_bytes(token)
        if data in lmforge_id:
            hf_ids[lmforge_id[data]] = index  # type: ignore[index]
    if (hf_ids < 0).any():
        return None  # a byte or a merged token missing from the vocabulary
    added = {token["content"]: token["id"] for token in spec["added_tokens"]}
    return ByteLevelFastPath(BPETokenizer(merges, pattern="gpt2"), hf_ids, added)


def _qualifies(spec: dict[str, Any]) -> bool:
    """Whether the file is byte-level BPE with GPT-2's split and nothing lmforge's BPE lacks."""
    model = spec.get("model") or {}
    pre = spec.get("pre_tokenizer") or {}
    plain_model = (
        model.get("type") == "BPE"
        and model.get("dropout") is None
        and not model.get("continuing_subword_prefix")
        and not model.get("end_of_word_suffix")
        and not model.get("byte_fallback")
        and not model.get("ignore_merges")
    )
    gpt2_split = (
        pre.get("type") == "ByteLevel"
        and not pre.get("add_prefix_space")
        and pre.get("use_regex", True)
    )
    plain_added = all(
        not (t.get("lstrip") or t.get("rstrip") or t.get("single_word"))
        for t in spec.get("added_tokens", [])
    )
    return plain_model and gpt2_split and plain_added and spec.get("normalizer") is None
