"""The ``lmforge`` command: thin wrappers that parse flags, call the library and print.

Every :class:`~lmforge.errors.LmforgeError` becomes one line on stderr and exit code 2.
Heavy modules (torch) are imported inside the commands that need them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any, NoReturn

from lmforge import __version__
from lmforge.errors import ConfigError, LmforgeError, out_of_memory
from lmforge.train_flags import (
    ALL_TRAIN_FLAGS,
    DATA_FLAGS,
    MODEL_FLAGS,
    TOKENIZER_FLAGS,
    TRAIN_FLAGS,
    add_flags,
    nested_options,
)

EXIT_USAGE = 2


# --- commands --------------------------------------------------------------------------------


def cmd_train(args: argparse.Namespace) -> int:
    from lmforge.config import resolve_config
    from lmforge.training.trainer import resume_config, train

    overrides = nested_options(args, ALL_TRAIN_FLAGS)
    if args.resume:
        if args.out and os.path.abspath(args.out) != os.path.abspath(args.resume):
            raise ConfigError("--resume RUN continues RUN in place; drop --out")
        for flag, given in (("--config", args.config), ("--overwrite", args.overwrite)):
            if given:
                raise ConfigError(
                    f"{flag} does not apply to --resume (a resumed run keeps the settings in "
                    f"its config.json); drop {flag}, or start a new run with --out"
                )
        allowed = {k: v for k, v in overrides.get("train", {}).items()}
        if set(overrides) - {"train"}:
            shown = ", ".join(sorted(set(overrides) - {"train"}))
            raise ConfigError(f"{shown} settings cannot change when resuming; drop those flags")
        config = resume_config(args.resume, allowed)
        result = train(config, resume=True, progress=not args.quiet)
    else:
        overrides["out"] = args.out
        config = resolve_config(overrides, args.config)
        result = train(config, overwrite=args.overwrite, progress=not args.quiet)
    _print_train_summary(result, config.data.corpus)
    return 0


def _print_train_summary(result: Any, corpus: str) -> None:
    if not result.main_process:
        return
    parts = [f"{result.steps} steps, {result.tokens:,} tokens in {result.elapsed_s:.0f} s"]
    if result.val_loss is not None:
        parts.append(f"val loss {result.val_loss:.4f}")
    if result.best_val_loss is not None:
        parts.append(f"best {result.best_val_loss:.4f}")
    if result.interrupted:
        print(
            f"interrupted at step {result.steps}: {', '.join(parts)}; saved {result.run_dir}",
            file=sys.stderr,
        )
        print(f"continue with: lmforge train --resume {result.run_dir}", file=sys.stderr)
    else:
        print(f"done: {', '.join(parts)}; run in {result.run_dir}", file=sys.stderr)
        prompt = " --prompt 'ROMEO:'" if corpus == "tinyshakespeare" else ""  # the others vary
        print(f"sample with: lmforge sample {result.run_dir}{prompt}", file=sys.stderr)


_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", '"': '"', "'": "'"}
_HEX_DIGITS = {"x": 2, "u": 4, "U": 8}


def unescape(text: str, flag: str = "--stop") -> str:
    r"""``text`` with the escapes \n \t \r \\ \" \' \xHH \uHHHH \UHHHHHHHH replaced by the
    characters they name (shells pass them to us as a backslash and a letter).

    >>> unescape(r"\n\n"), unescape(r"\u00e9\x41\\n")
    ('\n\n', 'éA\\n')
    """
    out: list[str] = []
    i = 0
    while i < len(text):
        backslash = text.find("\\", i)
        if backslash < 0:
            out.append(text[i:])
            break
        out.append(text[i:backslash])
        code = text[backslash + 1 : backslash + 2]
        if code in _ESCAPES:
            out.append(_ESCAPES[code])
            i = backslash + 2
            continue
        digits = _HEX_DIGITS.get(code, 0)
        hex_part = text[backslash + 2 : backslash + 2 + digits]
        if not digits or len(hex_part) != digits or not _is_hex(hex_part):
            escape = text[backslash : backslash + 2 + digits]
            problem = f"an unknown escape {escape}" if code else "a lone backslash at the end"
            raise ConfigError(
                f"{flag} '{text}' has {problem}; use \\n \\t \\r \\\\ \\\" \\' \\xHH or "
                "\\uHHHH (write \\\\ for a backslash)"
            )
        if int(hex_part, 16) > 0x10FFFF:
            raise ConfigError(f"{flag} '{text}': \\{code}{hex_part} is not a Unicode character")
        out.append(chr(int(hex_part, 16)))
        i = backslash + 2 + digits
    return "".join(out)


def _is_hex(digits: str) -> bool:
    return all(c in "0123456789abcdefABCDEF" for c in digits)


def _sample_config(args: argparse.Namespace) -> Any:
    from lmforge.generation import SampleConfig

    config = SampleConfig(
        max_new_tokens=args.length,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        repetition_penalty=args.repetition_penalty,
        stop=tuple(unescape(stop) for stop in args.stop or ()),
        num_samples=args.num_samples,
        seed=args.seed,
    )
    config.validate()
    return config


def cmd_sample(args: argparse.Namespace) -> int:
    from lmforge.generation import generate, stream
    from lmforge.runs import load_run

    config = _sample_config(args)
    run = load_run(args.run, checkpoint=args.checkpoint, device=args.device)
    if args.stream:
        if config.num_samples != 1:
            raise LmforgeError("--stream shows one sample at a time; drop --num-samples")
        sys.stdout.write(args.prompt)
        sys.stdout.flush()
        for piece in stream(run.model, run.tokenizer, args.prompt, config):
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        return 0
    completions = generate(run.model, run.tokenizer, args.prompt, config, progress=True)
    for i, completion in enumerate(completions):
        if i:
            print("-" * 40)
        print(args.prompt + completion)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from lmforge.evaluation import evaluate_run
    from lmforge.runs import load_run

    run = load_run(args.run, checkpoint=args.checkpoint, device=args.device)
    result = evaluate_run(
        run,
        split=args.split,
        corpus=args.corpus,
        data_dir=args.data_dir,
        batch_size=args.batch_size,
        progress=not args.json,
        stride=args.stride,
        max_tokens=args.max_tokens,
        block_size=args.block_size,
    )
    if args.json:
        print(json.dumps(result.to_dict()))
    else:
        print(f"split:           {args.split}")
        print(f"windows:         {result.windows}")
        print(f"tokens:          {result.tokens:,}")
        print(f"loss:            {result.loss:.4f} nats/token")
        print(f"perplexity:      {result.perplexity:.3f}")
        print(f"bits per char:   {result.bits_per_char:.4f}")
        if result.bits_per_byte is not None:
            print(f"bits per byte:   {result.bits_per_byte:.4f}")
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    from lmforge.generation import score
    from lmforge.runs import load_run

    run = load_run(args.run, checkpoint=args.checkpoint, device=args.device)
    results = score(run.model, run.tokenizer, args.prompt, args.continuations, join=args.join)
    if args.per_token:
        results.sort(key=lambda r: r.logprob_per_token, reverse=True)
    if args.json:
        print(json.dumps([r.to_dict() for r in results], ensure_ascii=False))
        return 0
    width = max(len(repr(r.continuation)) for r in results)
    print(f"log Pr{{continuation | {args.prompt!r}}}")
    print(f"{'continuation':<{width}}  {'logprob':>9}  {'per token':>9}  {'tokens':>6}  prob")
    for r in results:
        print(
            f"{r.continuation!r:<{width}}  {r.logprob:>9.3f}  {r.logprob_per_token:>9.3f}  "
            f"{len(r.tokens):>6}  {r.prob:.3e}"
        )
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from lmforge.export import export_hf

    out = export_hf(args.run, args.out_dir, checkpoint=args.checkpoint, overwrite=args.overwrite)
    print(
        f"exported {args.run} to {out}; load it with "
        f"transformers.AutoModelForCausalLM.from_pretrained({str(out)!r})",
        file=sys.stderr,
    )
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from lmforge.importing import import_hf

    out = import_hf(args.model, args.out, dtype=args.dtype, overwrite=args.overwrite)
    print(
        f"imported {args.model} to {out}; sample with: lmforge sample {out} --prompt 'Hello'",
        file=sys.stderr,
    )
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from lmforge.plotting import plot_run

    pictures = plot_run(args.run, args.out, checkpoint=args.checkpoint, neighbours=args.neighbours)
    for note in pictures.notes:
        print(f"lmforge: {note}", file=sys.stderr)
    print(pictures.neighbours, end="\n\n")
    for path in pictures.paths:
        print(path)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from lmforge.plotting import compare_runs, format_table

    rows = compare_runs(args.runs, None if args.json else args.out)
    if args.json:
        print(json.dumps([{k: v for k, v in r.items() if k != "val_curve"} for r in rows]))
    else:
        print(format_table(rows))
        print(f"validation curves: {args.out}", file=sys.stderr)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from lmforge.serving.server import read_api_key, serve

    return serve(
        args.runs,
        host=args.host,
        port=args.port,
        api_key=read_api_key(args.api_key, args.api_key_file),
        max_batch=args.max_batch,
        max_queue=args.max_queue,
        max_tokens_limit=args.max_tokens_limit,
        device=args.device,
        checkpoint=args.checkpoint,
        threads=args.threads,
    )


DEMO_SECONDS = 150


def cmd_demo(args: argparse.Namespace) -> int:
    from lmforge.config import resolve_config
    from lmforge.generation import SampleConfig, generate
    from lmforge.runs import load_run
    from lmforge.training.trainer import train

    seconds = args.seconds
    print(
        f"lmforge demo: training a character-level LSTM on Tiny Shakespeare for {seconds:.0f} s "
        f"(into {args.out}), then sampling from it.",
        file=sys.stderr,
    )
    config = resolve_config(
        {
            "out": args.out,
            "data": {"corpus": "tinyshakespeare"},
            "tokenizer": {"kind": "char"},
            "model": {
                "family": "lstm",
                "n_embd": 64,
                "n_hidden": 384,
                "n_layer": 2,
                "dropout": 0.0,
            },
            "train": {
                "time_budget": seconds,
                "batch_size": 32,
                "block_size": 96,
                "learning_rate": 4e-3,
                "warmup_steps": 50,
                "eval_interval": 100,
                "eval_iters": 10,
                "device": args.device,
            },
        }
    )
    result = train(config, overwrite=True, progress=not args.quiet)
    _print_train_summary(result, "tinyshakespeare")
    run = load_run(args.out, device=args.device)
    prompt = "ROMEO:"
    sample = generate(
        run.model,
        run.tokenizer,
        prompt,
        SampleConfig(max_new_tokens=args.length, temperature=0.8, seed=args.seed),
    )[0]
    print()
    print(prompt + sample)
    return 0


# --- parser ----------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line, like every other lmforge error."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}; see {self.prog} --help\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="lmforge",
        description="Build, train, evaluate and sample language models.",
    )
    parser.add_argument("--version", action="version", version=f"lmforge {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser(
        "train",
        help="train a model (writes a run directory)",
        description="Train a language model; writes RUN/ (config, tokenizer, "
        "weights, metrics). Flags override --config.",
    )
    p.add_argument("--out", metavar="RUN", help="run directory to create")
    p.add_argument("--config", metavar="TOML", help="read options from a TOML file")
    p.add_argument("--resume", metavar="RUN", help="continue a saved run exactly")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_flags(p, "data", DATA_FLAGS)
    add_flags(p, "tokenizer", TOKENIZER_FLAGS)
    add_flags(p, "model", MODEL_FLAGS)
    add_flags(p, "training", TRAIN_FLAGS)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("sample", help="generate text from a trained run")
    p.add_argument("run", metavar="RUN")
    p.add_argument(
        "--prompt",
        default="",
        help="text to continue (default: a new line); printed as typed, followed by the "
        "sample as the tokenizer decodes it after the prompt's tokens",
    )
    p.add_argument("--length", type=int, default=500, help="new tokens per sample")
    p.add_argument("--temperature", type=float, default=1.0, help="0 is greedy")
    p.add_argument("--top-k", type=int, default=None, help="sample from the k likeliest")
    p.add_argument("--top-p", type=float, default=None, help="nucleus sampling mass")
    p.add_argument("--repetition-penalty", type=float, default=1.0)
    p.add_argument(
        "--stop",
        action="append",
        metavar="TEXT",
        help="end a sample right before TEXT (repeatable); TEXT may use the escapes \\n \\t "
        "\\r \\\\ \\\" \\' \\xHH \\uHHHH, e.g. --stop '\\n\\n' ends at a blank line",
    )
    p.add_argument("--num-samples", type=int, default=1, help="samples, drawn as one batch")
    p.add_argument("--seed", type=int, default=None, help="makes sampling reproducible")
    p.add_argument("--stream", action="store_true", help="print tokens as they come")
    _add_run_options(p)
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("eval", help="loss, perplexity and bits per character on held-out text")
    p.add_argument("run", metavar="RUN")
    p.add_argument(
        "--split",
        default="val",
        choices=["train", "val", "test", "all"],
        help="split to score (all: the whole corpus text)",
    )
    p.add_argument("--corpus", help="score another corpus (name or path) instead")
    p.add_argument("--data-dir", help="where named corpora are looked for first")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument(
        "--block-size",
        type=int,
        default=None,
        help="window length (default: the run's training window; at most the model's context)",
    )
    p.add_argument(
        "--stride",
        type=int,
        default=None,
        metavar="S",
        help="slide the windows by S tokens, scoring each prediction once with up to a block "
        "of context (default: non-overlapping windows); recurrent models carry their state "
        "through the whole text instead",
    )
    p.add_argument(
        "--max-tokens", type=int, default=None, metavar="N", help="score the first N tokens only"
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    _add_run_options(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("score", help="log-probability of continuations given a prompt")
    p.add_argument("run", metavar="RUN")
    p.add_argument("--prompt", required=True)
    p.add_argument("continuations", nargs="+", metavar="CONTINUATION")
    p.add_argument(
        "--join",
        default=" ",
        help="text put between prompt and continuation when neither has a space "
        "there (default: one space)",
    )
    p.add_argument("--per-token", action="store_true", help="sort by log-probability per token")
    p.add_argument("--json", action="store_true", help="print a JSON list")
    _add_run_options(p)
    p.set_defaults(func=cmd_score)

    p = sub.add_parser(
        "export",
        help="write a Transformer run as a Hugging Face transformers folder",
        description="Write RUN as OUT_DIR with config.json, model.safetensors and tokenizer "
        "files that transformers loads (AutoModelForCausalLM, AutoTokenizer, pipeline): "
        "GPT-2 for learned positions, GPT-NeoX for rotary ones.",
    )
    p.add_argument("run", metavar="RUN")
    p.add_argument("out_dir", metavar="OUT_DIR")
    p.add_argument(
        "--format", default="hf", choices=["hf"], help="hf: Hugging Face (GPT-2 or GPT-NeoX)"
    )
    _add_checkpoint_option(p)
    p.add_argument("--overwrite", action="store_true", help="write into a non-empty OUT_DIR")
    p.set_defaults(func=cmd_export)

    _add_import_parser(sub)

    p = sub.add_parser(
        "plot",
        help="draw loss.png, embeddings.png (and bigram.png) and list nearest neighbours",
        description="Draw RUN's loss curves (loss.png), its embedding map coloured by token "
        "class (embeddings.png) and, for a bigram, its next-token table (bigram.png); write the "
        "nearest neighbours of a few tokens by cosine similarity (neighbours.txt) and print them.",
    )
    p.add_argument("run", metavar="RUN")
    p.add_argument("--out", metavar="DIR", help="where to write the pictures (default: RUN)")
    p.add_argument(
        "--checkpoint",
        default="best",
        choices=["best", "final"],
        help="weights whose embeddings are drawn",
    )
    p.add_argument(
        "--neighbours",
        nargs="+",
        metavar="TOKEN",
        help="tokens whose 5 nearest neighbours are listed (a space as ␣, a line break as \\n; "
        "default: a few common ones such as a e A t . \\n, or the he king said city war)",
    )
    p.set_defaults(func=cmd_plot)

    p = sub.add_parser("compare", help="compare runs: a table and their validation curves")
    p.add_argument("runs", nargs="+", metavar="RUN")
    p.add_argument("--out", default="compare.png", help="PNG of the curves (compare.png)")
    p.add_argument("--json", action="store_true", help="print the table as JSON instead")
    p.set_defaults(func=cmd_compare)

    _add_tokenize_parser(sub)
    _add_serve_parser(sub)

    p = sub.add_parser("demo", help="train a small LSTM on Tiny Shakespeare and sample from it")
    p.add_argument("--out", default="runs/demo", help="run directory (default runs/demo)")
    p.add_argument("--seconds", type=float, default=DEMO_SECONDS, help="training time budget")
    p.add_argument("--length", type=int, default=400, help="characters to sample")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_demo)
    return parser


def _add_import_parser(sub: Any) -> None:
    p = sub.add_parser(
        "import",
        help="make a Hugging Face model folder (GPT-2, Llama, Mistral, Qwen2) an lmforge run",
        description="Read DIR (config.json, model.safetensors or its shards or "
        "pytorch_model.bin, tokenizer.json) and write the run RUN that sample, score, eval, "
        "serve, export and train --init-from use. DIR may be hf:NAME to download NAME from "
        "the Hugging Face hub first (needs huggingface_hub and the network).",
    )
    p.add_argument("model", metavar="DIR", help="a Hugging Face model folder, or hf:NAME")
    p.add_argument("--out", required=True, metavar="RUN", help="run directory to create")
    p.add_argument(
        "--dtype",
        default="float32",
        choices=["float32", "bfloat16", "float16"],
        help="how the run stores the weights (default float32)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing run in --out")
    p.set_defaults(func=cmd_import)


def _tokenize_command(name: str) -> Callable[[argparse.Namespace], int]:
    """A ``tokenize`` subcommand, imported only when it runs (it never imports torch)."""

    def run(args: argparse.Namespace) -> int:
        from lmforge.tokenizers import commands

        return int(getattr(commands, f"tokenize_{name}")(args))

    return run


def _add_tokenize_parser(sub: Any) -> None:
    tokenize = sub.add_parser(
        "tokenize",
        help="train, apply, export or inspect a tokenizer",
        description="Tokenizers on their own: train one on a corpus, encode a corpus to a "
        ".bin file, export to Hugging Face, print statistics.",
    )
    commands = tokenize.add_subparsers(dest="tokenize_command", metavar="SUBCOMMAND")
    commands.required = True

    def corpus_options(p: argparse.ArgumentParser, nargs: str | None = None) -> None:
        p.add_argument(
            "corpus", metavar="CORPUS", nargs=nargs, help="a corpus name, text file or directory"
        )
        p.add_argument("--data-dir", help="where named corpora are looked for first")
        p.add_argument("--quiet", action="store_true", help="no progress bars")

    p = commands.add_parser(
        "train",
        help="train a tokenizer and save it as JSON",
        description="Learn a tokenizer from CORPUS (its training text: a file's whole text, "
        "wikitext-2's train.txt; character and word vocabularies take every split).",
    )
    corpus_options(p, nargs="?")  # "--special A B CORPUS" works: see tokenize_train
    p.add_argument("--kind", choices=["bpe", "char", "word"], default="bpe")
    p.add_argument("--vocab-size", type=int, help="BPE: 256 bytes + merges + special tokens")
    p.add_argument(
        "--pattern",
        default="gpt4",
        metavar="gpt2|gpt4|none|REGEX",
        help="BPE pre-tokenization split (default gpt4)",
    )
    p.add_argument("--special", nargs="+", metavar="TOKEN", help="BPE special tokens")
    p.add_argument("--min-freq", type=int, default=1, help="BPE: merge only pairs seen this often")
    p.add_argument("--word-split", choices=["words", "whitespace"], default="words")
    p.add_argument("--lowercase", action="store_true", help="word tokenizer: lowercase the text")
    p.add_argument("--max-vocab", type=int, help="word tokenizer: keep the most frequent words")
    p.add_argument("--unk", action="store_true", help="char/word: add <unk> for unknown tokens")
    p.add_argument("-o", "--output", required=True, metavar="JSON", help="tokenizer file to write")
    p.set_defaults(func=_tokenize_command("train"))

    def corpus_command(name: str, **texts: str) -> argparse.ArgumentParser:
        """A subcommand that reads a tokenizer file and (a split of) a corpus."""
        p = commands.add_parser(name, **texts)
        p.add_argument("tokenizer", metavar="TOKENIZER_JSON")
        corpus_options(p)
        p.add_argument(
            "--split",
            choices=["train", "val", "test", "all"],
            default="train",
            help="the corpus split to read (a single file is all train; default train)",
        )
        p.add_argument(
            "--special-text",
            choices=["plain", "allow", "error"],
            default="plain",
            help="special-token text in the corpus: ordinary text (plain, default), the "
            "special token (allow), or stop with an error",
        )
        p.set_defaults(func=_tokenize_command(name))
        return p

    p = corpus_command(
        "encode",
        help="encode a corpus to a .bin file of token ids",
        description="Encode CORPUS to raw little-endian uint16 ids (uint32 when the vocabulary "
        "has more than 65,536 tokens), as nanoGPT's train.bin.",
    )
    p.add_argument("-o", "--output", required=True, metavar="BIN", help="file to write")

    p = commands.add_parser(
        "export",
        help="export a tokenizer to Hugging Face",
        description="Write a Hugging Face tokenizer.json (-o FILE.json), or a directory that "
        "transformers' AutoTokenizer loads (-o DIR).",
    )
    p.add_argument("tokenizer", metavar="TOKENIZER_JSON")
    p.add_argument("--format", choices=["hf"], default="hf", help="hf: Hugging Face (default)")
    p.add_argument("-o", "--output", required=True, metavar="PATH")
    p.set_defaults(func=_tokenize_command("export"))

    p = corpus_command(
        "stats", help="tokens, bytes per token, longest and most frequent tokens on a corpus"
    )
    p.add_argument("--top", type=int, default=10, help="rows in the token tables")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def _add_serve_parser(sub: Any) -> None:
    p = sub.add_parser(
        "serve",
        help="serve runs over HTTP (OpenAI-compatible API, playground page)",
        description="Serve each RUN under its directory name as the model id: OpenAI-style "
        "/v1/completions and /v1/models, /v1/score, /tokenize, /detokenize, /health, "
        "/metrics, and a playground page at /. Ctrl-C or SIGTERM finishes the requests in "
        "flight and exits.",
    )
    p.add_argument("runs", nargs="+", metavar="RUN")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (8000; 0: any free port)")
    key = p.add_mutually_exclusive_group()
    key.add_argument("--api-key", metavar="KEY", help="require 'Authorization: Bearer KEY'")
    key.add_argument("--api-key-file", metavar="FILE", help="read the key from FILE")
    p.add_argument("--max-batch", type=int, default=32, help="sequences decoded together (32)")
    p.add_argument(
        "--max-queue", type=int, default=256, help="sequences waiting beyond that (256; then 429)"
    )
    p.add_argument(
        "--max-tokens-limit", type=int, default=4096, help="the largest max_tokens (4096)"
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads for generation (default: one fewer than the cores, at least 1: "
        "the HTTP side keeps a core; with one sequence, the count its first steps find fastest)",
    )
    _add_run_options(p)
    p.set_defaults(func=cmd_serve)


def _add_run_options(p: argparse.ArgumentParser) -> None:
    _add_checkpoint_option(p)
    p.add_argument("--device", default=None, help="auto (default), cpu, cuda, mps")


def _add_checkpoint_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--checkpoint",
        default="best",
        choices=["best", "final"],
        help="best (lowest val loss, the default) or final weights",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (2 for a user error)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code = _run_command(args.func, args)
    except BaseException as exc:
        job = _joined_job()
        if job is None:
            raise
        job.exit_now(_exit_code_after(exc))  # before `exc` and the frames it holds are freed
    job = _joined_job()
    if job is not None:
        job.exit_without_teardown(code)
    return code


def _run_command(func: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run one subcommand, turning lmforge's own errors into one line and an exit code."""
    try:
        return func(args)
    except LmforgeError as exc:
        message = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        print(f"lmforge: error: {message}", file=sys.stderr)
        return EXIT_USAGE
    except (RuntimeError, MemoryError) as exc:
        message = out_of_memory(exc)
        if message is None:
            raise
        print(f"lmforge: error: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("lmforge: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        sys.stderr.close()
        return 0


def _joined_job() -> ModuleType | None:
    """``lmforge.training.distributed`` if this process joined a torchrun job, else None
    (found without importing torch)."""
    module = sys.modules.get("lmforge.training.distributed")
    return module if module is not None and module.joined_a_job() else None


def _exit_code_after(exc: BaseException) -> int:
    """The exit code Python itself would give ``exc``, its traceback printed as Python would."""
    if isinstance(exc, SystemExit):
        return exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    traceback.print_exception(exc)
    return 1
