"""The fast BPE encoder: a ``tiktoken.Encoding`` built from lmforge's own merges.

tiktoken (optional, in the ``peers`` extra) encodes with the same vocabulary: token ``i`` has
rank ``i``, the bytes of each token are its key, the split pattern and special tokens are
lmforge's. tiktoken merges the adjacent pair whose *joined bytes* have the lowest rank, while
lmforge applies its merge list in order. For a vocabulary trained by merges (no two tokens share
bytes, and each token's own bytes encode to that token) both give the same ids, which the tests
check on real corpora and on random vocabularies and texts; a tokenizer without those properties
(hand-made merges) is never given to tiktoken. The pure-Python encoder stays the reference and the
fallback.

``LMFORGE_BPE_ENGINE`` picks the engine a BPE tokenizer encodes with: ``auto`` (default:
tiktoken when installed and the tokenizer is compatible), ``python`` (never tiktoken) or
``tiktoken`` (an error when it cannot be used).

>>> enc = to_tiktoken(tok)           # any BPETokenizer with the gpt2 or gpt4 pattern
>>> enc.encode_ordinary("hello") == tok.encode_ordinary("hello")
True
"""

from __future__ import annotations

import hashlib
import os
from typing import TYPE_CHECKING, Any

from lmforge.errors import TokenizerError
from lmforge.tokenizers.pretokenize import PATTERNS

if TYPE_CHECKING:
    from lmforge.tokenizers.bpe import BPETokenizer

ENGINE_VARIABLE = "LMFORGE_BPE_ENGINE"
ENGINES = ("auto", "python", "tiktoken")


def engine_choice() -> str:
    """The engine asked for in ``$LMFORGE_BPE_ENGINE`` (default ``auto``)."""
    choice = os.environ.get(ENGINE_VARIABLE, "auto").strip().lower() or "auto"
    if choice not in ENGINES:
        raise TokenizerError(
            f"{ENGINE_VARIABLE}={choice!r} is not an engine; use one of {', '.join(ENGINES)}"
        )
    return choice


def tiktoken_incompatibility(tokenizer: BPETokenizer) -> str | None:
    """Why tiktoken cannot encode exactly like ``tokenizer`` (``None`` when it can).

    >>> tiktoken_incompatibility(BPETokenizer([], pattern="none"))
    "tiktoken is used only with the gpt2 and gpt4 split patterns, not 'none'"
    """
    if tokenizer.pattern not in PATTERNS:
        return (
            f"tiktoken is used only with the gpt2 and gpt4 split patterns, "
            f"not {tokenizer.pattern!r}"
        )
    if not tokenizer.has_unique_tokens():
        return "two tokens of this vocabulary stand for the same bytes"
    index = tokenizer.first_inconsistent_token()
    if index is not None:
        return (
            f"token {index} ({tokenizer.id_to_token(index)!r}) is not what its own bytes encode "
            "to, so tiktoken's merging by rank would differ from the merge list"
        )
    return None


def to_tiktoken(tokenizer: BPETokenizer, name: str | None = None) -> Any:
    """A ``tiktoken.Encoding`` with the tokenizer's vocabulary, split pattern and specials.

    Raises :class:`TokenizerError` when tiktoken is missing or cannot match the tokenizer.
    """
    try:
        import tiktoken
    except ImportError:
        raise TokenizerError(
            "tiktoken is not installed; pip install tiktoken (or lmforge[peers])"
        ) from None
    reason = tiktoken_incompatibility(tokenizer)
    if reason is not None:
        raise TokenizerError(reason)
    if name is None:
        digest = hashlib.sha256(tokenizer.to_json().encode("utf-8")).hexdigest()[:12]
        name = f"lmforge-bpe-{digest}"
    ranks = {tokenizer.token_bytes(i): i for i in range(256 + len(tokenizer.merges))}
    return tiktoken.Encoding(
        name=name,
        pat_str=PATTERNS[tokenizer.pattern],
        mergeable_ranks=ranks,
        special_tokens=dict(tokenizer.special_tokens),
        explicit_n_vocab=tokenizer.vocab_size,
    )


def bulk_engine(tokenizer: BPETokenizer) -> Any:
    """The ``tiktoken.Encoding`` to encode with, or ``None`` for pure Python."""
    choice = engine_choice()
    if choice == "python":
        return None
    if choice == "tiktoken":
        return to_tiktoken(tokenizer)
    try:
        import tiktoken  # noqa: F401
    except ImportError:
        return None
    if tiktoken_incompatibility(tokenizer) is not None:
        return None
    return to_tiktoken(tokenizer)
