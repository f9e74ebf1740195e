"""Training throughput (tokens/s): lmforge against the programs people know, in one run.

    python benchmarks/train_speed.py                 # both cases, 1 thread, medians of 3
    python benchmarks/train_speed.py --case lstm --threads 2

Cases (issue 5):
  lstm         PyTorch's word-language-model example shape: 2-layer LSTM, 200 units, 200-wide
               embeddings, bptt 35, batch 20, WikiText-2 word vocabulary (33,278 tokens).
               Baseline: the example's training step (restated here: embedding → dropout →
               nn.LSTM → dropout → linear decoder, cross-entropy over the full logits,
               clip 0.25, plain SGD), consecutive bptt windows with the hidden state carried.
  transformer  nanoGPT's CPU shape: 4 layers, 4 heads, 128 wide, block 64, batch 12, Tiny
               Shakespeare characters (vocabulary 65). Baseline: nanoGPT's model and step
               (restated here: GPT with LayerNorm, causal SDPA attention, GELU MLP, tied
               embeddings; AdamW lr 1e-3 betas (0.9, 0.99) weight decay 0.1, clip 1.0).

Each lmforge variant runs lmforge's own Trainer step (``Trainer._train_step``) on the same
shape: "plain" is float32 eager with the plain softmax; "default" is what `lmforge train`
uses for that model; further rows show single settings. Ratios are against the baseline and
against lmforge plain, measured in the same run.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from lmforge import losses
from lmforge.config import resolve_config
from lmforge.training.distributed import DistributedInfo
from lmforge.training.trainer import Trainer, prepare_data

REPO = Path(__file__).resolve().parents[1]
if "LMFORGE_DATA_DIR" not in os.environ and (REPO.parent / "shared" / "data").is_dir():
    os.environ["LMFORGE_DATA_DIR"] = str(REPO.parent / "shared" / "data")


def time_steps(step: Callable[[], object], warmup: int, steps: int, repeats: int) -> float:
    """Median over ``repeats`` of the mean seconds per step (after ``warmup`` steps)."""
    for _ in range(warmup):
        step()
    means = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            step()
        means.append((time.perf_counter() - start) / steps)
    return statistics.median(means)


# --- the PyTorch word-language-model example's step, restated -------------------------------


class ExampleRNNModel(nn.Module):
    """pytorch/examples word_language_model RNNModel (LSTM), as that example builds it."""

    def __init__(
        self, ntoken: int, ninp: int = 200, nhid: int = 200, nlayers: int = 2, dropout: float = 0.2
    ) -> None:
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.encoder = nn.Embedding(ntoken, ninp)
        self.rnn = nn.LSTM(ninp, nhid, nlayers, dropout=dropout)
        self.decoder = nn.Linear(nhid, ntoken)
        nn.init.uniform_(self.encoder.weight, -0.1, 0.1)
        nn.init.zeros_(self.decoder.bias)
        nn.init.uniform_(self.decoder.weight, -0.1, 0.1)

    def forward(self, x: torch.Tensor, hidden: tuple) -> tuple[torch.Tensor, tuple]:
        output, hidden = self.rnn(self.drop(self.encoder(x)), hidden)
        return self.decoder(self.drop(output)), hidden


def example_lstm_step(train_ids: torch.Tensor, vocab: int) -> Callable[[], None]:
    """One training step of the example: bptt window i, carried hidden state, SGD lr 20."""
    torch.manual_seed(1111)
    model = ExampleRNNModel(vocab)
    batch, bptt, lr = 20, 35, 20.0
    n = train_ids.numel() // batch
    data = train_ids[: n * batch].view(batch, -1).t().contiguous()  # batchify
    hidden = tuple(torch.zeros(2, batch, 200) for _ in range(2))
    position = [0, hidden]

    def step() -> None:
        i, h = position
        if i + bptt + 1 >= data.size(0):
            i = 0
        x, y = data[i : i + bptt], data[i + 1 : i + 1 + bptt].reshape(-1)
        h = tuple(t.detach() for t in h)
        model.zero_grad()
        output, h = model(x, h)
        loss = F.cross_entropy(output.view(-1, vocab), y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.25)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(p.grad, alpha=-lr)
        position[:] = [i + bptt, h]

    return step


# --- nanoGPT's model and step, restated -----------------------------------------------------


class NanoBlock(nn.Module):
    def __init__(self, n_embd: int, n_head: int) -> None:
        super().__init__()
        self.n_head = n_head
        self.ln_1 = nn.LayerNorm(n_embd, bias=False)  # nanoGPT's train.py: bias = False
        self.c_attn = nn.Linear(n_embd, 3 * n_embd, bias=False)
        self.c_proj = nn.Linear(n_embd, n_embd, bias=False)
        self.ln_2 = nn.LayerNorm(n_embd, bias=False)
        self.c_fc = nn.Linear(n_embd, 4 * n_embd, bias=False)
        self.mlp_proj = nn.Linear(4 * n_embd, n_embd, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(c, dim=2)
        q, k, v = (z.view(b, t, self.n_head, c // self.n_head).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.c_proj(y.transpose(1, 2).contiguous().view(b, t, c))
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x))))


class NanoGPT(nn.Module):
    """nanoGPT's GPT: token + position embeddings, pre-LN blocks, tied head."""

    def __init__(self, vocab: int, block: int, n_layer: int, n_head: int, n_embd: int) -> None:
        super().__init__()
        self.wte = nn.Embedding(vocab, n_embd)
        self.wpe = nn.Embedding(block, n_embd)
        self.h = nn.ModuleList(NanoBlock(n_embd, n_head) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd, bias=False)
        self.lm_head = nn.Linear(n_embd, vocab, bias=False)
        self.lm_head.weight = self.wte.weight
        self.apply(self._init)
        for name, p in self.named_parameters():
            if name.endswith(("c_proj.weight", "mlp_proj.weight")):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * n_layer))

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(idx.shape[1], device=idx.device)
        x = self.wte(idx) + self.wpe(pos)
        for block in self.h:
            x = block(x)
        return self.lm_head(self.ln_f(x))


def nanogpt_step(train_ids: torch.Tensor, vocab: int) -> Callable[[], None]:
    """One nanoGPT training iteration in its CPU configuration."""
    torch.manual_seed(1337)
    block, batch = 64, 12
    model = NanoGPT(vocab, block, n_layer=4, n_head=4, n_embd=128)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=1e-3,
        betas=(0.9, 0.99),
    )

    def step() -> None:
        ix = torch.randint(len(train_ids) - block, (batch,))
        x = torch.stack([train_ids[i : i + block] for i in ix])
        y = torch.stack([train_ids[i + 1 : i + 1 + block] for i in ix])
        logits = model(x)
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


# --- lmforge ---------------------------------------------------------------------------------


def lmforge_step(overrides: dict, fused: bool = True) -> tuple[Callable[[], None], Trainer]:
    """lmforge's own training step for a configuration (``fused=False``: plain softmax)."""
    config = resolve_config(overrides)
    tokenizer, stream = prepare_data(config, progress=False)
    torch.manual_seed(config.train.seed)
    from lmforge.models import build_model

    model = build_model(vocab_size=tokenizer.vocab_size, **config.model)
    trainer = Trainer(config, model, tokenizer, stream, DistributedInfo(), progress=False)
    threshold = losses.FUSED_MIN_VOCAB if fused else 1 << 40

    def step() -> None:
        saved = losses.FUSED_MIN_VOCAB
        losses.FUSED_MIN_VOCAB = threshold
        try:
            trainer._train_step(config.train.learning_rate)
        finally:
            losses.FUSED_MIN_VOCAB = saved

    return step, trainer


LSTM_RUN = {
    "out": "/tmp/lmforge-bench-lstm",
    "data": {"corpus": "wikitext-2"},
    "tokenizer": {"kind": "word", "word_split": "whitespace"},
    "model": {"family": "lstm", "n_embd": 200, "n_hidden": 200, "n_layer": 2, "dropout": 0.2},
    "train": {"batch_size": 20, "block_size": 35, "max_steps": 1, "device": "cpu"},
}
TRANSFORMER_RUN = {
    "out": "/tmp/lmforge-bench-gpt",
    "data": {"corpus": "tinyshakespeare"},
    "tokenizer": {"kind": "char"},
    "model": {
        "family": "transformer",
        "n_layer": 4,
        "n_head": 4,
        "n_embd": 128,
        "dropout": 0.0,
        "position": "learned",  # as nanoGPT
        "bias": False,
    },
    "train": {
        "batch_size": 12,
        "block_size": 64,
        "max_steps": 1,
        "device": "cpu",
        "learning_rate": 1e-3,
        "weight_decay": 0.1,
    },
}


def with_train(run: dict, **train: object) -> dict:
    """``run`` with some train options replaced."""
    return {**run, "train": {**run["train"], **train}}


def default_train_options(family: str) -> dict:
    """The dtype/compile choices `lmforge train` makes by default for a family."""
    config = resolve_config({"out": "/tmp/x", "model": {"family": family}})
    return {"dtype": config.train.dtype, "compile": config.train.compile}


def report(title: str, rows: list[tuple[str, float]], tokens_per_step: int) -> None:
    """Print tokens/s and ratios against the first row (the baseline) and 'lmforge plain'."""
    base = rows[0][1]
    plain = dict(rows).get("lmforge plain (fp32, eager)", base)
    print(f"\n{title}  (torch {torch.__version__}, {torch.get_num_threads()} thread(s))")
    print(f"{'variant':<44} {'ms/step':>9} {'tokens/s':>10} {'× baseline':>11} {'× plain':>8}")
    for name, seconds in rows:
        print(
            f"{name:<44} {seconds * 1000:>9.1f} {tokens_per_step / seconds:>10,.0f} "
            f"{base / seconds:>11.2f} {plain / seconds:>8.2f}"
        )


def bench_lstm(args: argparse.Namespace) -> None:
    step, trainer = lmforge_step(with_train(LSTM_RUN, dtype="float32"), fused=False)
    vocab = trainer.tokenizer.vocab_size
    assert vocab == 33278, vocab
    train_ids = torch.from_numpy(trainer.stream.tokens("train").astype("int64"))
    rows = [("PyTorch word_language_model step", example_lstm_step(train_ids, vocab))]
    rows.append(("lmforge plain (fp32, eager)", step))
    rows.append(
        ("lmforge fused softmax (fp32)", lmforge_step(with_train(LSTM_RUN, dtype="float32"))[0])
    )
    rows.append(
        (
            "lmforge fused softmax + bf16 autocast",
            lmforge_step(with_train(LSTM_RUN, dtype="bfloat16"))[0],
        )
    )
    defaults = default_train_options("lstm")
    rows.append(
        (
            f"lmforge default ({defaults['dtype']}{', compile' if defaults['compile'] else ''})",
            lmforge_step(with_train(LSTM_RUN, **defaults))[0],
        )
    )
    timed = [(name, time_steps(fn, args.warmup, args.steps, args.repeats)) for name, fn in rows]
    report(
        "LSTM, word-language-model shape (2×200, bptt 35, batch 20, vocab 33,278)", timed, 20 * 35
    )


def bench_transformer(args: argparse.Namespace) -> None:
    step, trainer = lmforge_step(with_train(TRANSFORMER_RUN, dtype="float32"), fused=False)
    train_ids = torch.from_numpy(trainer.stream.tokens("train").astype("int64"))
    rows = [("nanoGPT step (CPU config)", nanogpt_step(train_ids, trainer.tokenizer.vocab_size))]
    rows.append(("lmforge plain (fp32, eager)", step))
    rows.append(
        ("lmforge bf16 autocast", lmforge_step(with_train(TRANSFORMER_RUN, dtype="bfloat16"))[0])
    )
    rows.append(
        ("lmforge compile (fp32)", lmforge_step(with_train(TRANSFORMER_RUN, compile=True))[0])
    )
    defaults = default_train_options("transformer")
    rows.append(
        (
            f"lmforge default ({defaults['dtype']}{', compile' if defaults['compile'] else ''})",
            lmforge_step(with_train(TRANSFORMER_RUN, **defaults))[0],
        )
    )
    rotary = {**TRANSFORMER_RUN, "model": {**TRANSFORMER_RUN["model"], "position": "rotary"}}
    rows.append(
        ("lmforge default, rotary positions", lmforge_step(with_train(rotary, **defaults))[0])
    )
    timed = [(name, time_steps(fn, args.warmup, args.steps, args.repeats)) for name, fn in rows]
    report(
        "Transformer, nanoGPT CPU shape (4 layers, 4 heads, 128 wide, block 64, batch 12)",
        timed,
        12 * 64,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--case", choices=["lstm", "transformer", "all"], default="all")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per repeat")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps (compile, caches)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.case in ("lstm", "all"):
        bench_lstm(args)
    if args.case in ("transformer", "all"):
        bench_transformer(args)


if __name__ == "__main__":
    main()
