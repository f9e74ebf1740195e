"""The peer of the word-level LSTM preset: PyTorch's word-language-model example (pytorch/examples,
word_language_model/) restated, trained for a wall-clock budget, scored on WikiText-2's
validation and test files.

Its recipe, not lmforge's: a vocabulary of its own built from the three files in order of first
appearance, each line's words (split on whitespace) followed by `<eos>`; the token stream
batchified into 20 sequential columns and read 35 tokens at a time with the LSTM state carried
(and detached) from one batch to the next; a 2-layer LSTM, 200-wide embeddings and states,
dropout 0.2, untied; float32; plain SGD from lr 20 with the gradient norm clipped to 0.25,
the rate divided by 4 whenever an epoch's validation loss fails to improve; the weights of the
best validation loss scored on the test file, 10 columns, state carried. The network is
lmforge's RecurrentLM, which has the example's layers and initialisation.

    python benchmarks/word_lm_example.py --time-budget 600
    python benchmarks/word_lm_example.py --time-budget 600 --json    # the ladder's row

Training stops at the budget, also mid-epoch; its validation evaluations at epoch ends count
towards it, the final scoring does not (as `lmforge eval` after `lmforge train`).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from ladder import PEER, split_chars, split_score

from lmforge.data.corpora import resolve_corpus
from lmforge.models.base import build_model

EOS = "<eos>"
SPLIT_FILES = {"train": "train", "val": "valid", "test": "test"}


def build_vocabulary(texts: list[str]) -> dict[str, int]:
    """Word → id in order of first appearance over ``texts``, each line's words followed by
    ``<eos>``, as the example's ``Corpus`` does.

    >>> build_vocabulary(["a b\\n", "b c\\n"])
    {'a': 0, 'b': 1, '<eos>': 2, 'c': 3}
    """
    vocab: dict[str, int] = {}
    for text in texts:
        for line in lines(text):
            for word in [*line.split(), EOS]:
                vocab.setdefault(word, len(vocab))
    return vocab


def lines(text: str) -> list[str]:
    """The lines of ``text`` as iterating over its file gives them (split at line feeds only).

    >>> lines("a\\x0cb\\n\\nc\\n")
    ['a\\x0cb', '', 'c']
    """
    parts = text.split("\n")
    return parts[:-1] if parts and parts[-1] == "" else parts


def encode(text: str, vocab: dict[str, int]) -> torch.Tensor:
    """The ids of ``text``'s words, ``<eos>`` after each line."""
    return torch.tensor(
        [vocab[word] for line in lines(text) for word in [*line.split(), EOS]],
        dtype=torch.long,
    )


def batchify(ids: torch.Tensor, columns: int) -> torch.Tensor:
    """``ids`` cut into ``columns`` equal sequential rows (the remainder dropped): row r holds
    the r-th stretch of the text, so consecutive batches continue each row's text.

    >>> batchify(torch.arange(7), 2).tolist()
    [[0, 1, 2], [3, 4, 5]]
    """
    length = len(ids) // columns
    return ids[: length * columns].view(columns, length)


def bptt_batches(data: torch.Tensor, bptt: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(inputs, targets) pieces of ``bptt`` tokens along the rows of ``data``, in order."""
    return [
        (data[:, i : i + min(bptt, data.shape[1] - 1 - i)], data[:, i + 1 : i + 1 + bptt])
        for i in range(0, data.shape[1] - 1, bptt)
    ]


def detach(state: Any) -> Any:
    """The recurrent state cut from the graph of the previous batch."""
    return tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()


@torch.no_grad()
def total_nats(model: torch.nn.Module, data: torch.Tensor, bptt: int) -> tuple[float, int]:
    """(summed cross-entropy, predictions) over ``data``, state carried through each row."""
    model.eval()
    nats, count, state = 0.0, 0, None
    for x, y in bptt_batches(data, bptt):
        logits, state = model(x, state)
        nats += float(F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum"))
        count += y.numel()
    return nats, count


def train(args: argparse.Namespace) -> dict[str, Any]:
    """Train for ``args.time_budget`` seconds; the ladder's row of the best weights."""
    torch.manual_seed(args.seed)
    corpus = resolve_corpus(args.corpus, args.data_dir)
    texts = {split: corpus.read(split) for split in SPLIT_FILES}
    vocab = build_vocabulary([texts["train"], texts["val"], texts["test"]])
    train_data = batchify(encode(texts["train"], vocab), args.batch_size)
    held_out = {split: batchify(encode(texts[split], vocab), 10) for split in ("val", "test")}
    model = build_model(
        "lstm", vocab_size=len(vocab), n_embd=200, n_hidden=200, n_layer=2, dropout=0.2
    )
    lr, best_val, best_state = args.lr, math.inf, None
    steps, tokens, curve = 0, 0, []
    started = time.perf_counter()
    out_of_time = False
    while not out_of_time:
        model.train()
        state = None
        for x, y in bptt_batches(train_data, args.bptt):
            if time.perf_counter() - started >= args.time_budget:
                out_of_time = True
                break
            state = detach(state) if state is not None else None
            logits, state = model(x, state)
            loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
            model.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(p.grad, alpha=-lr)
            steps, tokens = steps + 1, tokens + y.numel()
        if steps == 0:
            break
        nats, count = total_nats(model, held_out["val"], args.bptt)
        elapsed = time.perf_counter() - started
        curve.append([round(min(elapsed, args.time_budget), 3), nats / count])
        if nats / count < best_val:
            best_val, best_state = nats / count, copy.deepcopy(model.state_dict())
        else:
            lr /= 4.0
    train_s = min(time.perf_counter() - started, args.time_budget)
    if best_state is not None:
        model.load_state_dict(best_state)
    chars = split_chars(args.corpus)
    scores = {}
    for split, data in held_out.items():
        nats, count = total_nats(model, data, args.bptt)
        scores[split] = split_score(nats / count, count, chars[split])
    return {
        "corpus": "wikitext-2-word",
        "family": PEER,
        "flags": "benchmarks/word_lm_example.py",
        "vocab_size": len(vocab),
        "parameters": model.num_parameters(),
        "steps": steps,
        "tokens": tokens,
        "train_s": round(train_s, 1),
        "wall_s": round(time.perf_counter() - started, 1),
        "tokens_per_s": tokens / max(train_s, 1e-9),
        **scores,
        "curve": curve,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--time-budget", type=float, default=600.0, help="training seconds")
    parser.add_argument("--lr", type=float, default=20.0)
    parser.add_argument("--clip", type=float, default=0.25)
    parser.add_argument("--bptt", type=int, default=35)
    parser.add_argument("--batch-size", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1111)
    parser.add_argument(
        "--corpus",
        default="wikitext-2",
        help="wikitext-2, or a folder with train.txt, valid.txt and test.txt",
    )
    parser.add_argument("--data-dir", type=Path, default=None, help="where wikitext-2/ lies")
    parser.add_argument("--json", action="store_true", help="print the ladder's row as JSON")
    args = parser.parse_args()
    row = train(args)
    if args.json:
        print(json.dumps(row))
        return
    print(
        f"vocabulary {row['vocab_size']:,}, {row['parameters']:,} parameters, {row['steps']:,} "
        f"steps, {row['tokens']:,} tokens in {row['train_s']:.0f} s "
        f"({row['tokens_per_s']:,.0f} tokens/s)"
    )
    for split in ("val", "test"):
        score = row[split]
        print(
            f"{split}: loss {score['loss']:.4f}, perplexity {score['perplexity']:.2f}, "
            f"{score['bits_per_char']:.3f} bits/char"
        )


if __name__ == "__main__":
    main()
