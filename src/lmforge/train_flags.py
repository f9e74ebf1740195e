"""The flags of ``lmforge train``: one table per section of the run configuration.

Each flag's ``dest`` is ``"section.field"``, so the flags that were given become the nested
overrides that :func:`lmforge.config.resolve_config` layers over the defaults and the file.
"""

from __future__ import annotations

import argparse
from typing import Any

from lmforge.config import preset_names

DATA_FLAGS: list[tuple[str, dict[str, Any]]] = [
    (
        "--corpus",
        {
            "dest": "data.corpus",
            "metavar": "NAME|PATH",
            "help": "tinyshakespeare, wikitext-2, names, a .txt file or a directory "
            "(default tinyshakespeare)",
        },
    ),
    (
        "--data-dir",
        {
            "dest": "data.data_dir",
            "metavar": "DIR",
            "help": "where named corpora are looked for first (default $LMFORGE_DATA_DIR)",
        },
    ),
    (
        "--val-fraction",
        {
            "dest": "data.val_fraction",
            "type": float,
            "help": "share of the text held out when the corpus has no "
            "validation file (default 0.1)",
        },
    ),
]

TOKENIZER_FLAGS: list[tuple[str, dict[str, Any]]] = [
    (
        "--tokenizer",
        {
            "dest": "tokenizer.kind",
            "choices": ["char", "word", "bpe"],
            "help": "tokenizer to train for the run (default char)",
        },
    ),
    (
        "--tokenizer-file",
        {
            "dest": "tokenizer.file",
            "metavar": "JSON",
            "help": "use this saved tokenizer instead of training one",
        },
    ),
    ("--vocab-size", {"dest": "tokenizer.vocab_size", "type": int, "help": "BPE vocabulary size"}),
    (
        "--pattern",
        {
            "dest": "tokenizer.pattern",
            "metavar": "gpt2|gpt4|none|REGEX",
            "help": "BPE pre-tokenization split pattern (default gpt4)",
        },
    ),
    (
        "--special",
        {
            "dest": "tokenizer.special",
            "nargs": "+",
            "metavar": "TOKEN",
            "help": "BPE special tokens, e.g. <|endoftext|>",
        },
    ),
    (
        "--special-text",
        {
            "dest": "tokenizer.special_text",
            "choices": ["plain", "allow", "error"],
            "help": "special-token text in the corpus: ordinary text (plain, default), the "
            "special token (allow), or an error",
        },
    ),
    (
        "--word-split",
        {
            "dest": "tokenizer.word_split",
            "choices": ["words", "whitespace"],
            "help": "word tokenizer: separate punctuation (words) or split on "
            "spaces only (whitespace)",
        },
    ),
    (
        "--lowercase",
        {
            "dest": "tokenizer.lowercase",
            "action": "store_const",
            "const": True,
            "help": "word tokenizer: lowercase the text",
        },
    ),
    (
        "--min-freq",
        {
            "dest": "tokenizer.min_freq",
            "type": int,
            "help": "word/BPE: drop tokens (pairs) seen fewer times",
        },
    ),
    (
        "--max-vocab",
        {
            "dest": "tokenizer.max_vocab",
            "type": int,
            "help": "word tokenizer: keep only the most frequent words",
        },
    ),
    (
        "--unk",
        {
            "dest": "tokenizer.unk",
            "action": "store_const",
            "const": True,
            "help": "add <unk> so unknown tokens encode to it",
        },
    ),
]

MODEL_FLAGS: list[tuple[str, dict[str, Any]]] = [
    (
        "--model",
        {
            "dest": "model.family",
            "metavar": "FAMILY",
            "help": "bigram, context, rnn, gru, lstm or transformer (default lstm)",
        },
    ),
    (
        "--preset",
        {
            "dest": "model.preset",
            "choices": preset_names(),
            "help": "size and training preset of the model; transformer: tiny (default on a "
            "CPU), small (default on a GPU), gpt2, llama (tiny's compute in Llama's "
            "architecture); lstm: wt2 (word-level WikiText-2); size flags override it",
        },
    ),
    ("--n-embd", {"dest": "model.n_embd", "type": int, "help": "embedding size"}),
    ("--n-hidden", {"dest": "model.n_hidden", "type": int, "help": "recurrent state size"}),
    ("--n-layer", {"dest": "model.n_layer", "type": int, "help": "number of layers"}),
    ("--n-head", {"dest": "model.n_head", "type": int, "help": "attention heads"}),
    ("--dropout", {"dest": "model.dropout", "type": float, "help": "dropout probability"}),
    (
        "--tie-weights",
        {
            "dest": "model.tie_weights",
            "action": "store_const",
            "const": True,
            "help": "share the embedding and output matrices",
        },
    ),
    (
        "--no-tie-weights",
        {
            "dest": "model.tie_weights",
            "action": "store_const",
            "const": False,
            "help": "a separate output matrix",
        },
    ),
    (
        "--no-bias",
        {
            "dest": "model.bias",
            "action": "store_const",
            "const": False,
            "help": "transformer: no biases in the linear layers and norms",
        },
    ),
    (
        "--bias",
        {
            "dest": "model.bias",
            "action": "store_const",
            "const": True,
            "help": "transformer: biases in the linear layers and norms (GPT-2)",
        },
    ),
    (
        "--attn-bias",
        {
            "dest": "model.attn_bias",
            "action": "store_const",
            "const": True,
            "help": "transformer: biases on the query/key/value projection even with "
            "--no-bias (Qwen2)",
        },
    ),
    (
        "--norm",
        {
            "dest": "model.norm",
            "choices": ["layernorm", "rmsnorm"],
            "help": "transformer normalisation: layernorm (GPT-2) or rmsnorm (Llama)",
        },
    ),
    ("--norm-eps", {"dest": "model.norm_eps", "type": float, "help": "norm epsilon (1e-5)"}),
    (
        "--mlp",
        {
            "dest": "model.mlp",
            "choices": ["gelu", "gelu_tanh", "swiglu"],
            "help": "transformer MLP: exact GELU (nanoGPT), GPT-2's tanh GELU, or SwiGLU (Llama)",
        },
    ),
    (
        "--mlp-hidden",
        {
            "dest": "model.mlp_hidden",
            "type": int,
            "help": "MLP hidden units (default 4 x n_embd; SwiGLU 8/3 x n_embd rounded up to 64)",
        },
    ),
    (
        "--n-kv-head",
        {
            "dest": "model.n_kv_head",
            "type": int,
            "help": "key/value heads for grouped-query attention (default n_head)",
        },
    ),
    (
        "--rope-theta",
        {"dest": "model.rope_theta", "type": float, "help": "rotary base (default 10000)"},
    ),
    (
        "--position",
        {
            "dest": "model.position",
            "choices": ["learned", "rotary"],
            "help": "transformer positions: a learned table (GPT-2) or rotary (RoPE)",
        },
    ),
    (
        "--context-mode",
        {
            "dest": "model.mode",
            "choices": ["sum", "mean"],
            "help": "context model: sum or mean of the embeddings",
        },
    ),
]

TRAIN_FLAGS: list[tuple[str, dict[str, Any]]] = [
    (
        "--init-from",
        {
            "dest": "train.init_from",
            "metavar": "RUN|HF_DIR",
            "help": "fine-tune: start from this run's weights (or a Hugging Face model "
            "folder's), with its model and tokenizer",
        },
    ),
    (
        "--freeze",
        {
            "dest": "train.freeze",
            "nargs": "+",
            "choices": ["embeddings"],
            "help": "hold these weights fixed (embeddings: token and position tables)",
        },
    ),
    ("--batch-size", {"dest": "train.batch_size", "type": int, "help": "windows per step (B)"}),
    ("--block-size", {"dest": "train.block_size", "type": int, "help": "window length (T)"}),
    ("--max-steps", {"dest": "train.max_steps", "type": int, "help": "optimizer steps"}),
    (
        "--time-budget",
        {
            "dest": "train.time_budget",
            "type": float,
            "metavar": "SECONDS",
            "help": "train for this long; the schedule spans it and the last "
            "evaluation and checkpoint fit inside it",
        },
    ),
    ("--learning-rate", {"dest": "train.learning_rate", "type": float, "help": "peak rate"}),
    (
        "--min-lr",
        {
            "dest": "train.min_lr",
            "type": float,
            "help": "rate at the end of the cosine (default learning rate / 10)",
        },
    ),
    ("--warmup-steps", {"dest": "train.warmup_steps", "type": int, "help": "linear warmup"}),
    ("--lr-schedule", {"dest": "train.lr_schedule", "choices": ["cosine", "constant"]}),
    ("--optimizer", {"dest": "train.optimizer", "choices": ["adamw", "sgd"]}),
    (
        "--weight-decay",
        {"dest": "train.weight_decay", "type": float, "help": "AdamW decay (matrices only)"},
    ),
    ("--beta1", {"dest": "train.beta1", "type": float}),
    ("--beta2", {"dest": "train.beta2", "type": float}),
    ("--momentum", {"dest": "train.momentum", "type": float, "help": "SGD momentum"}),
    (
        "--grad-clip",
        {"dest": "train.grad_clip", "type": float, "help": "clip the gradient norm (0: off)"},
    ),
    (
        "--grad-accum",
        {"dest": "train.grad_accum", "type": int, "help": "batches accumulated per optimizer step"},
    ),
    (
        "--eval-interval",
        {
            "dest": "train.eval_interval",
            "type": int,
            "help": "steps between validation + checkpoint",
        },
    ),
    (
        "--eval-iters",
        {"dest": "train.eval_iters", "type": int, "help": "batches per validation estimate"},
    ),
    (
        "--log-interval",
        {"dest": "train.log_interval", "type": int, "help": "steps between metrics records"},
    ),
    ("--seed", {"dest": "train.seed", "type": int, "help": "makes the run reproducible"}),
    ("--device", {"dest": "train.device", "help": "auto (default), cpu, cuda, cuda:N, mps"}),
    (
        "--dtype",
        {
            "dest": "train.dtype",
            "choices": ["auto", "float32", "bfloat16", "float16"],
            "help": "autocast precision (auto, the default: bfloat16 where the device computes "
            "it natively, else float32)",
        },
    ),
    (
        "--strategy",
        {
            "dest": "train.strategy",
            "choices": ["ddp", "fsdp"],
            "help": "under torchrun: replicate the model on every process (ddp, the default) "
            "or shard its weights, gradients and optimizer state across them (fsdp)",
        },
    ),
    (
        "--compile",
        {
            "dest": "train.compile",
            "action": "store_const",
            "const": True,
            "help": "torch.compile the model",
        },
    ),
]


def add_flags(parser: argparse.ArgumentParser, title: str, flags: list) -> None:
    """Add ``flags`` to ``parser`` as one titled group; every flag defaults to None (unset)."""
    group = parser.add_argument_group(title)
    for flag, options in flags:
        group.add_argument(flag, default=None, **options)


def nested_options(args: argparse.Namespace, flags: list) -> dict[str, Any]:
    """The flags that were given, as configuration sections: ``--batch-size 8`` alone gives
    ``{'train': {'batch_size': 8}}``."""
    tree: dict[str, Any] = {}
    for _, options in flags:
        section, field = options["dest"].split(".")
        value = getattr(args, options["dest"])
        if value is not None:
            tree.setdefault(section, {})[field] = value
    return tree


ALL_TRAIN_FLAGS = DATA_FLAGS + TOKENIZER_FLAGS + MODEL_FLAGS + TRAIN_FLAGS
