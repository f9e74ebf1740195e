"""What a trained embedding table shows: a labelled 2-D map coloured by token class, the
nearest neighbours of a few tokens by cosine similarity, and the bigram's next-token table.

>>> weight = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-1.0, 0.0]])
>>> cosine_neighbours(weight, 0, k=3)
[(1, 0.8), (2, 0.0), (3, -1.0)]
>>> print(neighbours_table(weight, ["a", "b", "c", "d"], [0], k=2))
| token | 1 | 2 |
|---|---|---|
| `a` | `b` 0.800 | `c` 0.000 |
"""

from __future__ import annotations

import unicodedata
from pathlib import Path

import numpy as np

from lmforge.errors import ConfigError
from lmforge.plotting import pyplot, save_png

NEIGHBOURS = 5
MAX_MAP_TOKENS = 200  # word and BPE maps: this many of the most frequent tokens (readable)
MAX_HEATMAP_TOKENS = 96  # the bigram heat-map keeps every label readable up to this size
DEFAULT_QUERIES = {
    "char": ["a", "e", "A", "t", ".", "\n", "1"],
    "word": ["the", "king", "he", "said", "1", "city", "war"],
    "bpe": [" the", " king", " he", " said", " 1", " city", " war"],
}
MIN_DEFAULT_QUERIES = 3
CLASS_COLOURS = {  # tab10, one colour per class of every rule set
    "vowel": "tab:red",
    "consonant": "tab:blue",
    "capital vowel": "tab:orange",
    "capital consonant": "tab:cyan",
    "digit": "tab:purple",
    "punctuation": "tab:green",
    "whitespace": "tab:brown",
    "determiner": "tab:red",
    "pronoun": "tab:orange",
    "preposition": "tab:blue",
    "conjunction": "tab:cyan",
    "auxiliary / modal": "tab:purple",
    "number": "tab:pink",
    "word start": "tab:blue",
    "word piece": "tab:orange",
    "other": "tab:gray",
}
_VISIBLE = {" ": "␣", "\n": "\\n", "\t": "\\t", "\r": "\\r"}


def printable(token: str) -> str:
    """A token as it should appear in a picture or a table: whitespace made visible, other
    control characters escaped (no font has a glyph for them).

    >>> printable(" the\\n"), printable("\\x00\\x7f")
    ('␣the\\\\n', '\\\\x00\\\\x7f')
    """
    return "".join(_VISIBLE.get(c) or _escaped(c) for c in token)


def _escaped(char: str) -> str:
    """``char``, or its escape when it is a control character."""
    return f"\\x{ord(char):02x}" if unicodedata.category(char) == "Cc" else char


def cosine_neighbours(
    weight: np.ndarray, index: int, k: int = NEIGHBOURS
) -> list[tuple[int, float]]:
    """The ``k`` rows of ``weight`` most similar to row ``index`` by cosine similarity, best
    first (ties: lower index first), as (row, similarity); the row itself is left out and a
    zero row has similarity 0 with every row."""
    rows = weight.astype(np.float64)
    norms = np.linalg.norm(rows, axis=1)
    unit = rows / np.where(norms > 0, norms, 1.0)[:, None]
    similarity = np.round(unit @ unit[index], 6) + 0.0  # rounded, so that ties are ties; no -0
    order = [j for j in np.lexsort((np.arange(len(rows)), -similarity)) if j != index]
    return [(int(j), float(similarity[j])) for j in order[:k]]


def _markdown_code(text: str) -> str:
    fence = "``" if "`" in text else "`"
    pad = " " if "`" in text else ""
    return f"{fence}{pad}{printable(text)}{pad}{fence}".replace("|", "\\|")


def neighbours_table(
    weight: np.ndarray, tokens: list[str], queries: list[int], k: int = NEIGHBOURS
) -> str:
    """A Markdown table: one row per query token, its ``k`` nearest tokens by cosine
    similarity of their embeddings (rows of ``weight``) with the similarities."""
    lines = [
        "| token | " + " | ".join(str(i + 1) for i in range(k)) + " |",
        "|---" * (k + 1) + "|",
    ]
    for query in queries:
        cells = [
            f"{_markdown_code(tokens[j])} {similarity:.3f}"
            for j, similarity in cosine_neighbours(weight, query, k)
        ]
        lines.append(f"| {_markdown_code(tokens[query])} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def find_tokens(tokens: list[str], wanted: list[str]) -> list[int]:
    """The ids of the ``wanted`` tokens, spelled as the vocabulary spells them or as
    :func:`printable` shows them (``␣the``, ``\\n``); an unknown one is an error naming it.

    >>> find_tokens(["a", "\\n", " the"], ["\\\\n", "␣the", "a"])
    [1, 2, 0]
    """
    ids = {token: i for i, token in enumerate(tokens)}
    for i, token in enumerate(tokens):
        ids.setdefault(printable(token), i)
    missing = [w for w in wanted if w not in ids]
    if missing:
        raise ConfigError(
            f"--neighbours: {', '.join(repr(w) for w in missing)} not in the run's vocabulary "
            f"of {len(tokens):,} tokens; give tokens as the vocabulary spells them "
            "(a space as ␣, a line break as \\n)"
        )
    return [ids[w] for w in wanted]


def default_queries(tokens: list[str], kind: str, frequency_order: list[int]) -> list[int]:
    """The tokens whose neighbours are listed by default: those of :data:`DEFAULT_QUERIES`
    that the vocabulary has, topped up with the most frequent tokens to
    ``MIN_DEFAULT_QUERIES``."""
    ids = {token: i for i, token in enumerate(tokens)}
    chosen = [ids[t] for t in DEFAULT_QUERIES.get(kind, DEFAULT_QUERIES["bpe"]) if t in ids]
    for i in frequency_order:
        if len(chosen) >= MIN_DEFAULT_QUERIES:
            break
        if i not in chosen:
            chosen.append(i)
    return chosen


def plot_embedding_map(
    coords: np.ndarray,
    labels: list[str],
    classes: list[str],
    class_names: tuple[str, ...],
    path: Path,
    title: str,
) -> None:
    """A scatter of 2-D points, each labelled with its token and coloured by its class, with a
    legend of the classes present (and how many tokens each has)."""
    plt = pyplot()
    crowded = len(labels) > 100
    fig, ax = plt.subplots(figsize=(14, 12) if crowded else (10, 9))
    for name in class_names:
        members = [i for i, c in enumerate(classes) if c == name]
        if not members:
            continue
        colour = CLASS_COLOURS.get(name, "tab:gray")
        ax.scatter(
            coords[members, 0],
            coords[members, 1],
            s=10 if crowded else 25,
            color=colour,
            alpha=0.6,
            label=f"{name} ({len(members)})",
        )
        for i in members:
            ax.annotate(
                printable(labels[i]),
                coords[i],
                xytext=(2, 2),
                textcoords="offset points",
                fontsize=7 if crowded else 10,
                color=colour,
            )
    ax.legend(loc="best", fontsize=9, framealpha=0.8)
    ax.set_title(title)
    ax.set_xlabel("principal component 1")
    ax.set_ylabel("principal component 2")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_png(fig, path)


def next_token_probabilities(logits: np.ndarray) -> np.ndarray:
    """The bigram's table p(next | current): the softmax of each row of its logit table.

    >>> next_token_probabilities(np.log(np.array([[1.0, 3.0], [2.0, 2.0]])))
    array([[0.25, 0.75],
           [0.5 , 0.5 ]])
    """
    table = logits.astype(np.float64)
    probabilities = np.exp(table - table.max(axis=1, keepdims=True))
    return probabilities / probabilities.sum(axis=1, keepdims=True)


def plot_bigram_table(probabilities: np.ndarray, labels: list[str], path: Path, title: str) -> None:
    """The next-token table p(next | current) as an image: one row per current token, one
    column per next token, every axis label shown, a colour bar of the probability (on a
    square-root scale, so that the many small probabilities stay visible)."""
    from matplotlib.colors import PowerNorm

    plt = pyplot()
    n = len(labels)
    side = max(6.0, 0.16 * n + 2)
    fig, ax = plt.subplots(figsize=(side + 1.5, side))
    image = ax.imshow(probabilities, cmap="magma", norm=PowerNorm(0.5, vmin=0.0), aspect="equal")
    shown = [printable(t) for t in labels]
    fontsize = 7 if n <= 70 else 6
    ax.set_xticks(range(n), shown, fontsize=fontsize, rotation=90)
    ax.set_yticks(range(n), shown, fontsize=fontsize)
    ax.set_xlabel("next token")
    ax.set_ylabel("current token")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, fraction=0.04, pad=0.02, label="p(next | current)")
    fig.tight_layout()
    save_png(fig, path)
