"""Coarse classes of tokens, for colouring the embedding map: one small rule set per tokenizer
kind, so that a picture's legend says what a colour means.

>>> char_class("e"), char_class("T"), char_class("?"), char_class("\\n")
('vowel', 'capital consonant', 'punctuation', 'whitespace')
>>> word_class("the"), word_class("would"), word_class("1914"), word_class("king")
('determiner', 'auxiliary / modal', 'number', 'other')
>>> piece_class(" the"), piece_class("ing"), piece_class(" 19"), piece_class("),")
('word start', 'word piece', 'number', 'punctuation')
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable

CHAR_CLASSES = (
    "vowel",
    "consonant",
    "capital vowel",
    "capital consonant",
    "digit",
    "punctuation",
    "whitespace",
    "other",
)
WORD_CLASSES = (
    "determiner",
    "pronoun",
    "preposition",
    "conjunction",
    "auxiliary / modal",
    "number",
    "punctuation",
    "other",
)
PIECE_CLASSES = ("word start", "word piece", "number", "punctuation", "whitespace", "other")


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


VOWELS = frozenset("aeiou")
DETERMINERS = _words(
    "the a an this that these those some any no every each either neither all both another "
    "such what which whose my your his her its our their"
)
PRONOUNS = _words(
    "i me you he him she it we us they them myself yourself himself herself itself ourselves "
    "yourselves themselves who whom mine yours hers ours theirs someone something anyone "
    "anything everyone everything nothing nobody none"
)
PREPOSITIONS = _words(
    "of in to for on at by with from into onto upon about above across after against along "
    "among around before behind below beneath beside besides between beyond during except "
    "inside near off out outside over past since through throughout toward towards under "
    "underneath until unlike up via within without per despite"
)
CONJUNCTIONS = _words(
    "and or but nor so yet if because although though while whereas unless whether than as "
    "when where once"
)
AUXILIARIES = _words(
    "be is am are was were been being have has had having do does did will would shall should "
    "can could may might must"
)
NUMBER_WORDS = _words(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen twenty thirty forty fifty sixty seventy "
    "eighty ninety hundred thousand million billion"
)
_NUMERAL = re.compile(r"\d+(?:[.,]\d+)*")
_WORD_LISTS = (
    ("determiner", DETERMINERS),
    ("pronoun", PRONOUNS),
    ("preposition", PREPOSITIONS),
    ("conjunction", CONJUNCTIONS),
    ("auxiliary / modal", AUXILIARIES),
    ("number", NUMBER_WORDS),
)


def char_class(token: str) -> str:
    """The class of a character token: lower-case vowel or consonant (accented letters by their
    base letter; y is a consonant), capital vowel or consonant, digit, punctuation (symbols
    such as ``$`` and ``&`` included), whitespace, or other (``<unk>``, control characters).

    >>> [char_class(c) for c in "aAbB"]
    ['vowel', 'capital vowel', 'consonant', 'capital consonant']
    >>> [char_class(c) for c in ["3", "$", " ", "é", "<unk>"]]
    ['digit', 'punctuation', 'whitespace', 'vowel', 'other']
    """
    if len(token) != 1:
        return "other"
    if token.isspace():
        return "whitespace"
    if token.isdigit():
        return "digit"
    if token.isalpha():
        base = unicodedata.normalize("NFD", token)[0]
        kind = "vowel" if base.lower() in VOWELS else "consonant"
        return f"capital {kind}" if token.isupper() else kind
    if unicodedata.category(token)[0] in "PS":
        return "punctuation"
    return "other"


def word_class(token: str) -> str:
    """A simple part of speech of a word token from small closed-class lists (case-blind):
    determiner, pronoun, preposition, conjunction, auxiliary / modal, number (numerals and
    number words), punctuation (no letter or digit: ``,``, ``@-@``, a line break), or other
    (open-class words and ``<unk>``). A word on two lists takes the first: ``that`` is a
    determiner, ``for`` a preposition.

    >>> [word_class(w) for w in ["The", "he", "of", "and"]]
    ['determiner', 'pronoun', 'preposition', 'conjunction']
    >>> [word_class(w) for w in ["was", "3.5", "@-@", "city"]]
    ['auxiliary / modal', 'number', 'punctuation', 'other']
    """
    if _NUMERAL.fullmatch(token):
        return "number"
    if not any(c.isalnum() for c in token):
        return "punctuation"
    lower = token.lower()
    for name, words in _WORD_LISTS:
        if lower in words:
            return name
    return "other"


def piece_class(token: str) -> str:
    """The class of a BPE piece: word start (a space then letters), word piece (letters only),
    number (digits, after an optional space), punctuation (no letter or digit), whitespace,
    or other (mixed pieces, stray bytes shown as ``\\xNN``).

    >>> [piece_class(t) for t in [" king", "dom", "2024", " .", "\\n\\n", "'s"]]
    ['word start', 'word piece', 'number', 'punctuation', 'whitespace', 'other']
    """
    if token.isspace():
        return "whitespace"
    if "\\x" in token:
        return "other"
    body = token[1:] if token.startswith(" ") else token
    if body.isalpha():
        return "word start" if token.startswith(" ") else "word piece"
    if body.isdigit():
        return "number"
    if not any(c.isalnum() or c.isspace() for c in body):
        return "punctuation"
    return "other"


CLASSIFIERS: dict[str, tuple[Callable[[str], str], tuple[str, ...]]] = {
    "char": (char_class, CHAR_CLASSES),
    "word": (word_class, WORD_CLASSES),
    "bpe": (piece_class, PIECE_CLASSES),
    "hf": (piece_class, PIECE_CLASSES),
}


def token_classes(tokens: list[str], kind: str) -> tuple[list[str], tuple[str, ...]]:
    """The class of each token under the rules of tokenizer ``kind`` (``char``, ``word``,
    ``bpe``, ``hf``; others use the BPE rules), and the ordered class names for a legend.

    >>> token_classes(["a", "B"], "char")[0]
    ['vowel', 'capital consonant']
    """
    classify, names = CLASSIFIERS.get(kind, CLASSIFIERS["bpe"])
    return [classify(t) for t in tokens], names
