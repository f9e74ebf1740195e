"""Generation speed of the Transformer: the KV cache against its peers, in the same run.

Two tables, batch 1, tokens per second (medians of ``--repeats`` runs, torch threads fixed):

* ``baby``: nanoGPT's shakespeare-char shape (6 layers, 6 heads, 384 wide, block 256,
  vocabulary 65, random GPT-2-initialised weights). lmforge's cached generation against the
  same model generating without a cache, as nanoGPT's ``generate`` does (re-run the last
  ``block_size`` tokens at every step). Bar: ≥ 5×.
* ``gpt2``: the GPT-2 124M shape. lmforge's cached generation against ``transformers``'
  ``GPT2LMHeadModel.generate`` (greedy, ``use_cache=True``) on the weights written by
  ``lmforge export`` (:func:`lmforge.export.write_hf_model`). Bar: ≥ 1.0×. The greedy tokens
  of the two are compared as a check that they compute the same function.

    python benchmarks/generation.py --threads 1            # both tables, 1 thread
    python benchmarks/generation.py --threads 2 --only gpt2
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from lmforge.config import TRANSFORMER_PRESETS
from lmforge.generation import SampleConfig, generate_ids
from lmforge.models import build_model

BABY = {"n_layer": 6, "n_head": 6, "n_embd": 384, "block_size": 256, "vocab_size": 65}
GPT2 = {**TRANSFORMER_PRESETS["gpt2"]["model"], "block_size": 1024, "vocab_size": 50257}


def lmforge_tokens(model: torch.nn.Module, prompt: list[int], new: int, seed: int) -> list[int]:
    """lmforge's generation loop (KV cache, sliding window); greedy when ``seed`` < 0."""
    config = SampleConfig(
        max_new_tokens=new, temperature=0.0 if seed < 0 else 1.0, seed=max(seed, 0)
    )
    return [int(t) for t in torch.cat(list(generate_ids(model, prompt, config)))]


@torch.inference_mode()
def cacheless_tokens(model: torch.nn.Module, prompt: list[int], new: int, seed: int) -> list[int]:
    """nanoGPT's ``generate``: crop to the last block, re-run it, sample the next token."""
    generator = torch.Generator().manual_seed(seed)
    idx = torch.tensor([prompt])
    block = model.max_context
    for _ in range(new):
        logits, _ = model(idx[:, -block:])
        probs = logits[:, -1].float().softmax(-1)
        idx = torch.cat([idx, torch.multinomial(probs, 1, generator=generator)], dim=1)
    return idx[0, len(prompt) :].tolist()


def hf_tokens(hf_model: torch.nn.Module, prompt: list[int], new: int) -> list[int]:
    """``transformers``' greedy ``generate`` with its KV cache."""
    with torch.inference_mode():
        out = hf_model.generate(
            torch.tensor([prompt]),
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            max_new_tokens=new,
            min_new_tokens=new,
            do_sample=False,
            use_cache=True,
            pad_token_id=0,
        )
    return out[0, len(prompt) :].tolist()


def timed(run: Callable[[], list[int]], repeats: int) -> tuple[float, list[int]]:
    """(median seconds, tokens of the last run) over ``repeats`` runs."""
    seconds, tokens = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        tokens = run()
        seconds.append(time.perf_counter() - t0)
    return statistics.median(seconds), tokens


def baby_table(new: int, repeats: int) -> list[tuple[str, float]]:
    """tokens/s of lmforge's cached loop and of the cache-less loop on the baby shape."""
    torch.manual_seed(0)
    model = build_model("transformer", **BABY).eval()
    prompt = [0]
    lmforge_tokens(model, prompt, 20, seed=1)  # warm up
    cached, _ = timed(lambda: lmforge_tokens(model, prompt, new, seed=1), repeats)
    cacheless, _ = timed(lambda: cacheless_tokens(model, prompt, new, seed=1), repeats)
    return [
        ("lmforge, KV cache", new / cached),
        ("same model, no cache (nanoGPT)", new / cacheless),
    ]


def gpt2_table(new: int, repeats: int) -> tuple[list[tuple[str, float]], float]:
    """tokens/s of lmforge and of transformers on the exported GPT-2 124M weights, and the
    share of greedy tokens on which the two agree."""
    from transformers import GPT2LMHeadModel

    from lmforge.export import write_hf_model

    torch.manual_seed(0)
    model = build_model("transformer", **GPT2).eval()
    with tempfile.TemporaryDirectory() as folder:
        write_hf_model(model, Path(folder))
        hf_model = GPT2LMHeadModel.from_pretrained(folder).eval()
    prompt = torch.randint(0, GPT2["vocab_size"], (8,), generator=torch.Generator().manual_seed(0))
    prompt_list = prompt.tolist()
    lmforge_tokens(model, prompt_list, 10, seed=-1)  # warm up both
    hf_tokens(hf_model, prompt_list, 10)
    ours, ours_tokens = timed(lambda: lmforge_tokens(model, prompt_list, new, seed=-1), repeats)
    theirs, hf_out = timed(lambda: hf_tokens(hf_model, prompt_list, new), repeats)
    agree = sum(a == b for a, b in zip(ours_tokens, hf_out, strict=True)) / new
    return [("lmforge, KV cache", new / ours), ("transformers generate", new / theirs)], agree


def print_table(title: str, rows: list[tuple[str, float]]) -> None:
    """Rows of (name, tokens/s), with the ratio of the first row to each."""
    print(f"\n{title}")
    print(f"{'generator':<34} {'tokens/s':>10} {'lmforge ×':>10}")
    for name, rate in rows:
        print(f"{name:<34} {rate:>10.1f} {rows[0][1] / rate:>10.2f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--new-tokens", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3, help="runs per generator (median)")
    parser.add_argument("--only", choices=["baby", "gpt2"], help="run one table only")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {args.threads} thread(s), batch 1, "
        f"{args.new_tokens} new tokens, median of {args.repeats}"
    )
    if args.only in (None, "baby"):
        rows = baby_table(args.new_tokens, args.repeats)
        print_table("baby: 6 layers, 6 heads, 384 wide, block 256, vocabulary 65", rows)
    if args.only in (None, "gpt2"):
        if importlib.util.find_spec("transformers") is None:
            print("\ngpt2: skipped (install transformers: pip install -e '.[peers]')")
        else:
            rows, agree = gpt2_table(args.new_tokens, args.repeats)
            print_table("gpt2: GPT-2 124M shape, greedy, exported weights", rows)
            print(f"greedy tokens equal to transformers': {agree:.0%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
