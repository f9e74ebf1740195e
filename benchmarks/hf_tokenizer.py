"""Encoding speed of the ``hf`` tokenizer kind (issue 10): a GPT-2-style ``tokenizer.json``
encoded by the ``tokenizers`` library against lmforge's own BPE (the fast path of
:mod:`lmforge.tokenizers.hf_fast`), same run, same text, after checking the ids are identical.

The tokenizer is a byte-level BPE with GPT-2's ``ByteLevel`` pre-tokenizer trained here by
``BpeTrainer`` on Tiny Shakespeare (no network). Encoding is timed in-process on the whole
text (``encode_continuation``: no BOS), medians of ``--repeats`` runs, each with a freshly
loaded tokenizer (empty caches). The library runs on ``--threads`` threads
(``RAYON_NUM_THREADS``): ``encode`` of one text uses one, ``encode_chunks`` (the corpus →
tokens step, a batch of chunks at a time) uses them all.

    LMFORGE_DATA_DIR=../shared/data python benchmarks/hf_tokenizer.py [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]


def median_seconds(run: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def train_folder(text: str, vocab_size: int, folder: Path) -> None:
    """A GPT-2-style model folder (tokenizer.json + tokenizer_config.json)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([text], trainer)
    eot = "<|endoftext|>"
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=eot, eos_token=eot).save_pretrained(
        folder
    )


def fresh(folder: Path, engine: str, bpe_engine: str = "tiktoken"):
    from lmforge.tokenizers import load_hf_tokenizer

    os.environ["LMFORGE_HF_ENGINE"] = engine
    os.environ["LMFORGE_BPE_ENGINE"] = bpe_engine
    tok = load_hf_tokenizer(folder)
    if tok.fast_path() is not None:
        tok.fast_path().bpe.engine()
    return tok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--vocab-sizes", type=int, nargs="+", default=[4096, 16384])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    os.environ["RAYON_NUM_THREADS"] = str(args.threads)
    os.environ["TOKENIZERS_PARALLELISM"] = "true" if args.threads > 1 else "false"

    from lmforge.data.corpora import resolve_corpus
    from lmforge.data.stream import chunk_text

    text = resolve_corpus("tinyshakespeare").read("train")
    megabytes = len(text.encode()) / 1e6
    chunks = list(chunk_text(text))
    print(f"Tiny Shakespeare: {megabytes:.2f} MB, {len(chunks)} chunks; {args.threads} thread(s)")
    print("| vocabulary | encoder | MB/s | ratio |")
    print("|---|---|---|---|")
    for vocab_size in args.vocab_sizes:
        with tempfile.TemporaryDirectory() as work:
            folder = Path(work)
            train_folder(text, vocab_size, folder)
            library = fresh(folder, "tokenizers")
            expected = library.encode_continuation(text)
            assert fresh(folder, "auto").encode_continuation(text) == expected
            assert fresh(folder, "auto", "python").encode_continuation(text) == expected
            chunked = [i for ids in library.encode_chunks(chunks) for i in ids.tolist()]
            assert chunked == expected
            rows = {
                "tokenizers library, encode": ("tokenizers", "tiktoken", False),
                "tokenizers library, encode_chunks": ("tokenizers", "tiktoken", True),
                "lmforge BPE (tiktoken engine), encode": ("auto", "tiktoken", False),
                "lmforge BPE (Python engine), encode": ("auto", "python", False),
            }
            speeds = {}
            for name, (engine, bpe_engine, by_chunks) in rows.items():

                def run(
                    engine: str = engine,
                    bpe_engine: str = bpe_engine,
                    c: bool = by_chunks,
                    folder: Path = folder,
                ) -> object:
                    tok = fresh(folder, engine, bpe_engine)
                    if c:
                        return list(tok.encode_chunks(chunks))
                    return tok.encode_continuation(text)

                speeds[name] = megabytes / median_seconds(run, args.repeats)
            base = speeds["tokenizers library, encode"]
            for name, speed in speeds.items():
                print(f"| {vocab_size} | {name} | {speed:.2f} | {speed / base:.2f}× |")


if __name__ == "__main__":
    main()
