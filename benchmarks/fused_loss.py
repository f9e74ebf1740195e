"""Time the fused output layer + cross-entropy (``lmforge.losses.linear_cross_entropy``),
forward and backward, at the word-language-model shape (700 positions, 200 wide, WikiText-2's
33,278 words), in float32, under bfloat16 autocast, and with float16 inputs (float16 matrix
products are slow on a CPU: give it --dtypes float16 on a GPU-less machine only to check it).

    .venv/bin/python benchmarks/fused_loss.py --threads 1 --dtypes float32 bfloat16

Prints milliseconds per forward + backward (median of --repeats runs of --steps calls each).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from lmforge.losses import linear_cross_entropy

ROWS, WIDTH, VOCAB = 700, 200, 33_278


def time_step(dtype: str, steps: int, repeats: int) -> float:
    """Median milliseconds of one forward + backward for ``dtype`` (float32, bfloat16, float16)."""
    torch.manual_seed(0)
    stored = torch.float16 if dtype == "float16" else torch.float32
    hidden = torch.randn(ROWS, WIDTH).to(stored).requires_grad_()
    weight = (0.05 * torch.randn(VOCAB, WIDTH)).to(stored).requires_grad_()
    bias = torch.zeros(VOCAB).to(stored).requires_grad_()
    targets = torch.randint(0, VOCAB, (ROWS,))

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
            loss = linear_cross_entropy(hidden, weight, bias, targets)
        loss.backward()

    step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            step()
        times.append((time.perf_counter() - start) / steps * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--dtypes", nargs="+", default=["float32", "bfloat16"], help="float32 bfloat16 float16"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"| dtype | ms per forward + backward ({args.threads} thread(s)) |")
    print("|---|---|")
    for dtype in args.dtypes:
        print(f"| {dtype} | {time_step(dtype, args.steps, args.repeats):.1f} |")


if __name__ == "__main__":
    main()
