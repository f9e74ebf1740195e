"""Pre-tokenization: cut text into the pieces that byte-pair encoding merges within.

BPE never merges across a piece boundary. The pieces come from a split pattern: GPT-2's or
GPT-4's regex (built in as ``gpt2`` and ``gpt4``), a custom regex, or ``none`` (the whole text
is one piece). With a custom regex, the text between two matches is a piece of its own, so no
character is ever dropped (Hugging Face ``tokenizers`` calls this the "isolated" split):

>>> Splitter("gpt2").split("Hello world's 2024!!")
['Hello', ' world', "'s", ' 2024', '!!']
>>> Splitter("gpt4").split("Hello world's 2024!!")
['Hello', ' world', "'s", ' ', '202', '4', '!!']
>>> Splitter(r"\\d+").split("ab12cd")
['ab', '12', 'cd']

Special tokens (``<|endoftext|>``) are cut out before the pattern runs: see
:func:`split_special`.
"""

from __future__ import annotations

from collections.abc import Iterable

import regex

from lmforge.errors import TokenizerError

# GPT-2's pattern (as in tiktoken's r50k_base and Hugging Face's ByteLevel pre-tokenizer).
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
# GPT-4's pattern (tiktoken's cl100k_base, in the form minbpe uses).
GPT4_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*"""
    r"""|\s*[\r\n]|\s+(?!\S)|\s+"""
)
PATTERNS = {"gpt2": GPT2_PATTERN, "gpt4": GPT4_PATTERN}
NO_SPLIT = "none"


def pattern_regex(pattern: str) -> str | None:
    """The regex a pattern name stands for (``None`` for ``none``); a custom regex is checked
    and returned as it is.

    >>> pattern_regex("none") is None, pattern_regex(r"\\w+")
    (True, '\\\\w+')
    """
    if pattern == NO_SPLIT:
        return None
    if pattern in PATTERNS:
        return PATTERNS[pattern]
    if not isinstance(pattern, str) or not pattern:
        raise TokenizerError(f"split pattern {pattern!r} is empty; use gpt2, gpt4, none or a regex")
    try:
        compiled = regex.compile(pattern)
    except regex.error as exc:
        raise TokenizerError(
            f"invalid split pattern {pattern!r} ({exc}); use gpt2, gpt4, none or a valid regex"
        ) from None
    if compiled.fullmatch("") is not None:
        raise TokenizerError(
            f"split pattern {pattern!r} matches the empty string; make every match "
            "at least one character long (e.g. + instead of *)"
        )
    return pattern


class Splitter:
    """Cuts text into pieces by a split pattern (``gpt2``, ``gpt4``, ``none`` or a regex)."""

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        self.regex = pattern_regex(pattern)
        self._compiled = regex.compile(self.regex) if self.regex is not None else None
        # The built-in patterns match every character, so their matches are the pieces.
        self._covers_all = pattern in PATTERNS

    @property
    def builtin(self) -> bool:
        """Whether the pattern is GPT-2's or GPT-4's (or ``none``)."""
        return self.pattern in PATTERNS or self.pattern == NO_SPLIT

    def split(self, text: str) -> list[str]:
        """The pieces of ``text``, in order; they join to ``text``.

        >>> Splitter("none").split("a b"), Splitter("gpt2").split("")
        (['a b'], [])
        """
        if self._compiled is None:
            return [text] if text else []
        if self._covers_all:
            return self._compiled.findall(text)
        pieces: list[str] = []
        end = 0
        for match in self._compiled.finditer(text):
            start, stop = match.span()
            if start == stop:
                continue
            if start > end:
                pieces.append(text[end:start])
            pieces.append(text[start:stop])
            end = stop
        if end < len(text):
            pieces.append(text[end:])
        return pieces


class SpecialSplitter:
    """Finds special tokens in text. ``split`` returns the text between them and the specials
    themselves, alternating (the specials at the odd indices), longest special first.

    >>> SpecialSplitter(["<|endoftext|>"]).split("a<|endoftext|>b")
    ['a', '<|endoftext|>', 'b']
    """

    def __init__(self, specials: Iterable[str]) -> None:
        self.specials = sorted(specials, key=lambda s: (-len(s), s))
        alternatives = "|".join(regex.escape(s) for s in self.specials)
        self._compiled = regex.compile(f"({alternatives})") if self.specials else None

    def split(self, text: str) -> list[str]:
        """``[text, special, text, special, ..., text]``; just ``[text]`` without specials."""
        if self._compiled is None:
            return [text]
        return self._compiled.split(text)

    def find(self, text: str) -> tuple[str, int] | None:
        """The first special token in ``text`` and its position, or ``None``."""
        if self._compiled is None:
            return None
        match = self._compiled.search(text)
        return (match.group(), match.start()) if match else None
