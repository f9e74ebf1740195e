"""Greedy decoding speed of imported models: lmforge against ``transformers`` on the same
weights, in the same run.

Two shapes with random weights, built in ``transformers`` from a config (no download):

* ``smollm``: SmolLM-135M's shape, ``LlamaForCausalLM`` (30 layers, 576 wide, 9 query heads
  sharing 3 key/value heads, SwiGLU MLP of 1536, vocabulary 49,152, tied head, rotary base
  10,000, RMSNorm eps 1e-5);
* ``gpt2``: GPT-2 124M's shape, ``GPT2LMHeadModel`` (12 layers, 768 wide, 12 heads,
  vocabulary 50,257, tied head).

Each is saved with ``save_pretrained`` and read into lmforge by the importer
(:func:`lmforge.importing.read_hf_model`, the code behind ``lmforge import``). Both decode the
same random prompt greedily, batch 1: lmforge with ``generation.generate_ids``
(temperature 0, its KV cache), ``transformers`` with ``model.generate(do_sample=False,
max_new_tokens=N)``; medians of ``--repeats`` runs (alternating) at 1 and 2 torch threads.
The tokens of the two must be identical (a check that they compute the same function).
Goal: ≥ 1.2×.

    python benchmarks/decode_hf.py                       # both shapes, 1 and 2 threads
    python benchmarks/decode_hf.py --only smollm --threads 1 --new-tokens 50
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from lmforge.generation import SampleConfig, generate_ids
from lmforge.importing import read_hf_model
from lmforge.models.base import model_from_config

SMOLLM = {
    "vocab_size": 49152,
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "max_position_embeddings": 2048,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "tie_word_embeddings": True,
}
GPT2 = {"vocab_size": 50257, "n_positions": 1024, "n_embd": 768, "n_layer": 12, "n_head": 12}


def hf_model(shape: str) -> torch.nn.Module:
    """A ``transformers`` model of ``shape`` with its own random initialisation (seed 0)."""
    import transformers

    torch.manual_seed(0)
    if shape == "smollm":
        return transformers.LlamaForCausalLM(transformers.LlamaConfig(**SMOLLM)).eval()
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(**GPT2)).eval()


def imported(model: torch.nn.Module) -> torch.nn.Module:
    """The same weights as an lmforge Transformer, through ``save_pretrained`` and the
    importer."""
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder)
        on_meta, _ = read_hf_model(Path(folder))
    ours = model_from_config(on_meta.config_dict())  # real rotary tables
    ours.load_state_dict(on_meta.state_dict())
    return ours.eval()


def lmforge_tokens(model: torch.nn.Module, prompt: list[int], new: int) -> list[int]:
    """lmforge's greedy generation loop."""
    config = SampleConfig(max_new_tokens=new, temperature=0.0)
    return [int(t) for t in torch.cat(list(generate_ids(model, prompt, config)))]


def hf_tokens(model: torch.nn.Module, prompt: list[int], new: int) -> list[int]:
    """``transformers``' greedy ``generate`` (its KV cache)."""
    with torch.inference_mode():
        out = model.generate(
            torch.tensor([prompt]),
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            max_new_tokens=new,
            min_new_tokens=new,
            do_sample=False,
            pad_token_id=0,
        )
    return out[0, len(prompt) :].tolist()


def timed_pair(
    ours: Callable[[], list[int]], theirs: Callable[[], list[int]], repeats: int
) -> tuple[float, float, list[int], list[int]]:
    """Median seconds of each and the tokens of each's last run; the runs alternate, so a
    change of load on a shared machine falls on both alike."""
    seconds: tuple[list[float], list[float]] = ([], [])
    tokens: list[list[int]] = [[], []]
    for _ in range(repeats):
        for i, run in enumerate((ours, theirs)):
            started = time.perf_counter()
            tokens[i] = run()
            seconds[i].append(time.perf_counter() - started)
    return statistics.median(seconds[0]), statistics.median(seconds[1]), *tokens


def compare(shape: str, threads: list[int], new: int, repeats: int) -> list[tuple]:
    """Rows (shape, threads, lmforge tokens/s, transformers tokens/s, tokens identical)."""
    theirs = hf_model(shape)
    ours = imported(theirs)
    vocab = ours.config.vocab_size
    prompt = torch.randint(0, vocab, (8,), generator=torch.Generator().manual_seed(0)).tolist()
    rows = []
    for count in threads:
        torch.set_num_threads(count)
        lmforge_tokens(ours, prompt, 8)  # warm up both
        hf_tokens(theirs, prompt, 8)
        ours_s, theirs_s, ours_out, theirs_out = timed_pair(
            lambda: lmforge_tokens(ours, prompt, new),
            lambda: hf_tokens(theirs, prompt, new),
            repeats,
        )
        rows.append((shape, count, new / ours_s, new / theirs_s, ours_out == theirs_out))
        print_rows(rows[-1:])
    return rows


def print_rows(rows: list[tuple]) -> None:
    """One line per (shape, threads): tokens/s of each and lmforge's ratio."""
    for shape, count, ours, theirs, same in rows:
        print(
            f"{shape:<8} {count:>7} {ours:>14.1f} {theirs:>18.1f} {ours / theirs:>7.2f}× "
            f"{'identical' if same else 'DIFFERENT':>10}",
            flush=True,
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--new-tokens", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3, help="runs per generator (median)")
    parser.add_argument("--only", choices=["smollm", "gpt2"], help="one shape only")
    args = parser.parse_args(argv)
    import transformers

    print(
        f"torch {torch.__version__}, transformers {transformers.__version__}, batch 1, "
        f"8-token prompt, {args.new_tokens} new tokens, greedy, median of {args.repeats}"
    )
    header = f"{'shape':<8} {'threads':>7} {'lmforge tok/s':>14} {'transformers tok/s':>18}"
    print(f"{header} {'ratio':>8} {'tokens':>10}")
    rows = []
    for shape in [args.only] if args.only else ["smollm", "gpt2"]:
        rows += compare(shape, args.threads, args.new_tokens, args.repeats)
    return 0 if all(row[-1] for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
