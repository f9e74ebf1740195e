"""The bad-input catalogue: every case is one line on stderr, exit code 2, no traceback, and
nothing on disk written over.

Each case is listed, with the message a user sees, in ``docs/reliability.md``; regenerate
that table with ``python -m tests.test_errors`` (from the repository root) after changing a
message.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from lmforge.cli import main
from tests.conftest import markov_text

REPO = Path(__file__).resolve().parent.parent


@dataclasses.dataclass
class Context:
    """What a case may use: a scratch directory, a trained run (a private copy), its corpus."""

    tmp: Path
    run: Path
    corpus: Path
    monkeypatch: pytest.MonkeyPatch

    def write(self, name: str, content: str | bytes) -> Path:
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
        return path

    def edit_run_config(self, edit: Callable[[dict], None]) -> None:
        path = self.run / "config.json"
        config = json.loads(path.read_text())
        edit(config)
        path.write_text(json.dumps(config))


@dataclasses.dataclass
class Case:
    id: str
    area: str
    setup: Callable[[Context], list[str]]
    message: str  # a regular expression the error line must match


CASES: list[Case] = []


def case(area: str, message: str) -> Callable[[Callable[[Context], list[str]]], None]:
    def register(setup: Callable[[Context], list[str]]) -> None:
        CASES.append(Case(setup.__name__, area, setup, message))

    return register


def train_argv(ctx: Context, *flags: str, corpus: str | Path | None = None) -> list[str]:
    """A fast bigram training command into a fresh --out, with extra ``flags``."""
    return [
        "train",
        "--corpus",
        str(corpus if corpus is not None else ctx.corpus),
        "--model",
        "bigram",
        "--out",
        str(ctx.tmp / "new-run"),
        "--max-steps",
        "2",
        "--device",
        "cpu",
        "--quiet",
        *flags,
    ]


# --- corpus ----------------------------------------------------------------------------------


@case("corpus", r"corpus not found: '.*missing\.txt' is not a file or directory")
def corpus_missing(ctx: Context) -> list[str]:
    return train_argv(ctx, corpus=ctx.tmp / "missing.txt")


@case("corpus", r"is not UTF-8 text: byte 0xe9 at byte offset 3 .*iconv")
def corpus_not_utf8(ctx: Context) -> list[str]:
    return train_argv(ctx, corpus=ctx.write("latin1.txt", b"caf\xe9 au lait"))


@case("corpus", r"corpus file .*empty\.txt is empty")
def corpus_empty(ctx: Context) -> list[str]:
    return train_argv(ctx, corpus=ctx.write("empty.txt", " \n"))


@case("corpus", r"no \.txt files in directory .*; put UTF-8 text files")
def corpus_directory_without_text(ctx: Context) -> list[str]:
    ctx.write("texts/notes.md", "not a .txt file")
    return train_argv(ctx, corpus=ctx.tmp / "texts")


@case("corpus", r"the train split has 4 tokens, too few for windows of --block-size 128")
def corpus_too_short(ctx: Context) -> list[str]:
    return train_argv(ctx, corpus=ctx.write("short.txt", "abcab"))


@case("corpus", r"names/names\.txt is not available locally and LMFORGE_OFFLINE is set")
def corpus_offline(ctx: Context) -> list[str]:
    ctx.monkeypatch.setenv("LMFORGE_OFFLINE", "1")
    ctx.monkeypatch.setenv("LMFORGE_DATA_DIR", str(ctx.tmp / "no-data"))
    return train_argv(ctx, corpus="names")


@case("corpus", r"checksum mismatch for .*names\.txt.*delete it so it is downloaded again")
def corpus_checksum_mismatch(ctx: Context) -> list[str]:
    ctx.write("data/names/names.txt", "emma\nolivia\n")
    return train_argv(ctx, "--data-dir", str(ctx.tmp / "data"), corpus="names")


@case("corpus", r"the corpus has no 'test' split \(it has: train, val\); choose one of those")
def eval_missing_split(ctx: Context) -> list[str]:
    return ["eval", str(ctx.run), "--split", "test"]


# --- tokenizer file --------------------------------------------------------------------------


@case("tokenizer", r"tokenizer file not found: .*nope\.json; check the path")
def tokenizer_file_missing(ctx: Context) -> list[str]:
    return train_argv(ctx, "--tokenizer-file", str(ctx.tmp / "nope.json"))


@case("tokenizer", r"tok\.json is not valid JSON \(line 1, column 2\); re-create the tokenizer")
def tokenizer_file_not_json(ctx: Context) -> list[str]:
    return train_argv(ctx, "--tokenizer-file", str(ctx.write("tok.json", "{nope")))


@case("tokenizer", r"tokenizer")
def tokenizer_file_unknown_kind(ctx: Context) -> list[str]:
    tok = json.loads((ctx.run / "tokenizer.json").read_text())
    tok["kind"] = "sentencepiece"
    return train_argv(ctx, "--tokenizer-file", str(ctx.write("tok.json", json.dumps(tok))))


@case("tokenizer", r"token 'z' \(at character \d+\) is not in the vocabulary; .*--unk")
def tokenizer_does_not_cover_corpus(ctx: Context) -> list[str]:
    corpus = ctx.write("other.txt", markov_text(2000, alphabet="abcdefgz \n"))
    return train_argv(ctx, "--tokenizer-file", str(ctx.run / "tokenizer.json"), corpus=corpus)


@case("tokenizer", r"--tokenizer bpe needs --vocab-size N")
def tokenizer_bpe_without_vocab_size(ctx: Context) -> list[str]:
    return train_argv(ctx, "--tokenizer", "bpe")


# --- configuration ---------------------------------------------------------------------------


def toml_argv(ctx: Context, train_table: str) -> list[str]:
    config = ctx.write(
        "run.toml",
        f'out = "{ctx.tmp / "new-run"}"\n[data]\ncorpus = "{ctx.corpus}"\n'
        f'[model]\nfamily = "bigram"\n[train]\nmax_steps = 2\ndevice = "cpu"\n{train_table}',
    )
    return ["train", "--config", str(config), "--quiet"]


@case("config", r"\[train\] batch_size must be an integer, not '64'; .*batch_size = 64")
def toml_wrong_type(ctx: Context) -> list[str]:
    return toml_argv(ctx, 'batch_size = "64"\n')


@case("config", r"\[train\] learning_rate must be a finite number, not nan")
def toml_nan(ctx: Context) -> list[str]:
    return toml_argv(ctx, "learning_rate = nan\n")


@case("config", r"run\.toml is not valid TOML \(.*\); fix the file")
def toml_syntax(ctx: Context) -> list[str]:
    return toml_argv(ctx, "batch_size = = 3\n")


@case("config", r"unknown train option\(s\): batchsize; known: ")
def toml_unknown_option(ctx: Context) -> list[str]:
    return toml_argv(ctx, "batchsize = 3\n")


@case("config", r"run\.toml: unknown key\(s\) optim; use out and the tables")
def toml_unknown_table(ctx: Context) -> list[str]:
    return toml_argv(ctx, "[optim]\nlr = 3\n")


@case("config", r"\[model\] n_hidden must be an integer, not 1\.5")
def toml_model_wrong_type(ctx: Context) -> list[str]:
    config = ctx.write(
        "run.toml",
        f'out = "{ctx.tmp / "new-run"}"\n[data]\ncorpus = "{ctx.corpus}"\n'
        '[model]\nfamily = "lstm"\nn_hidden = 1.5\n[train]\nmax_steps = 2\n',
    )
    return ["train", "--config", str(config), "--quiet"]


@case("config", r"config file not found: .*absent\.toml; check the path")
def config_file_missing(ctx: Context) -> list[str]:
    return ["train", "--config", str(ctx.tmp / "absent.toml")]


@case("config", r"--beta1 must be at least 0 and below 1, got 1\.5")
def beta_out_of_range(ctx: Context) -> list[str]:
    return train_argv(ctx, "--beta1", "1.5")


@case("config", r"--beta2 must be at least 0 and below 1, got 1\.0")
def beta2_one(ctx: Context) -> list[str]:
    return train_argv(ctx, "--beta2", "1")


@case("config", r"--weight-decay must be 0 or more, got -0\.1")
def weight_decay_negative(ctx: Context) -> list[str]:
    return train_argv(ctx, "--weight-decay", "-0.1")


@case("config", r"--momentum must be at least 0 and below 1, got -0\.5")
def momentum_negative(ctx: Context) -> list[str]:
    return train_argv(ctx, "--optimizer", "sgd", "--momentum", "-0.5")


@case("config", r"--val-fraction must be between 0 and 1 \(exclusive\), got 1\.5")
def val_fraction_above_one(ctx: Context) -> list[str]:
    return train_argv(ctx, "--val-fraction", "1.5")


@case("config", r"--val-fraction must be between 0 and 1 \(exclusive\), got 0\.0")
def val_fraction_zero(ctx: Context) -> list[str]:
    return train_argv(ctx, "--val-fraction", "0")


@case("config", r"--learning-rate must be positive, got 0\.0")
def learning_rate_zero(ctx: Context) -> list[str]:
    return train_argv(ctx, "--learning-rate", "0")


@case("config", r"--max-steps must be 0 or more, got -1")
def max_steps_negative(ctx: Context) -> list[str]:
    return train_argv(ctx, "--max-steps", "-1")


@case("config", r"--dropout must be at least 0 and below 1, got 1\.5")
def dropout_out_of_range(ctx: Context) -> list[str]:
    argv = train_argv(ctx, "--dropout", "1.5")
    argv[argv.index("bigram")] = "lstm"
    return argv


@case("config", r"--n-embd 10 is not a multiple of --n-head 3")
def heads_do_not_divide(ctx: Context) -> list[str]:
    argv = train_argv(ctx, "--n-embd", "10", "--n-head", "3")
    argv[argv.index("bigram")] = "transformer"
    return argv


@case("config", r"unknown model 'gpt5'; choose one of ")
def unknown_model(ctx: Context) -> list[str]:
    argv = train_argv(ctx)
    argv[argv.index("bigram")] = "gpt5"
    return argv


@case("config", r"--preset applies to --model transformer only; drop it for bigram")
def preset_for_bigram(ctx: Context) -> list[str]:
    return train_argv(ctx, "--preset", "tiny")


# --- run directory ---------------------------------------------------------------------------


@case("run directory", r"run directory not found: .*nowhere; train one with `lmforge train`")
def run_missing(ctx: Context) -> list[str]:
    return ["sample", str(ctx.tmp / "nowhere")]


@case("run directory", r"is not an lmforge run \(no config\.json\); give the --out directory")
def run_not_a_run(ctx: Context) -> list[str]:
    (ctx.tmp / "plain").mkdir()
    return ["eval", str(ctx.tmp / "plain")]


@case("run directory", r"config\.json is damaged or was edited: the 'model' entry is missing")
def run_config_missing_key(ctx: Context) -> list[str]:
    ctx.edit_run_config(lambda config: config.pop("model"))
    return ["sample", str(ctx.run), "--length", "5"]


@case("run directory", r"config\.json describes a model that cannot be built \(the model .*family")
def run_config_model_without_family(ctx: Context) -> list[str]:
    ctx.edit_run_config(lambda config: config["model"].pop("family"))
    return ["sample", str(ctx.run), "--length", "5"]


@case("run directory", r"config\.json is damaged or was edited: \[train\] batch_size must be an")
def run_config_wrong_type(ctx: Context) -> list[str]:
    ctx.edit_run_config(lambda config: config["run"]["train"].update(batch_size="4"))
    return ["eval", str(ctx.run)]


@case("run directory", r"config\.json is damaged \(.*\); the run cannot be read")
def run_config_not_json(ctx: Context) -> list[str]:
    (ctx.run / "config.json").write_text('{"schema_version": 1,')
    return ["sample", str(ctx.run)]


@case("run directory", r"has run schema version 99; this lmforge reads version 1")
def run_config_future_schema(ctx: Context) -> list[str]:
    ctx.edit_run_config(lambda config: config.update(schema_version=99))
    return ["sample", str(ctx.run)]


@case("run directory", r"already holds a run; continue it with --resume .*--overwrite")
def train_into_existing_run(ctx: Context) -> list[str]:
    argv = train_argv(ctx)
    argv[argv.index("--out") + 1] = str(ctx.run)
    return argv


@case(
    "run directory",
    r"needs at least [\d.]+ MB \(weights \d+ B, .*\) but cpu has 1\.0 kB free: lower",
)
def train_beyond_memory(ctx: Context) -> list[str]:
    ctx.monkeypatch.setattr("lmforge.training.memory.available_memory", lambda device: 1000)
    argv = train_argv(ctx, "--overwrite")  # the run it would replace stays as it was
    argv[argv.index("--out") + 1] = str(ctx.run)
    return argv


@case("run directory", r"--out .*a-file is a file; choose a directory")
def train_out_is_a_file(ctx: Context) -> list[str]:
    argv = train_argv(ctx)
    argv[argv.index("--out") + 1] = str(ctx.write("a-file", "x"))
    return argv


@case("run directory", r"empty-dir is not an lmforge run \(no config\.json\)")
def resume_without_run(ctx: Context) -> list[str]:
    (ctx.tmp / "empty-dir").mkdir()
    return ["train", "--resume", str(ctx.tmp / "empty-dir"), "--quiet"]


@case("run directory", r"--config does not apply to --resume .*; drop --config")
def resume_with_config(ctx: Context) -> list[str]:
    config = ctx.write("run.toml", "[train]\nbatch_size = 8\n")
    return ["train", "--resume", str(ctx.run), "--config", str(config), "--quiet"]


@case("run directory", r"--overwrite does not apply to --resume")
def resume_with_overwrite(ctx: Context) -> list[str]:
    return ["train", "--resume", str(ctx.run), "--overwrite", "--quiet"]


@case("run directory", r"--resume RUN continues RUN in place; drop --out")
def resume_with_other_out(ctx: Context) -> list[str]:
    return ["train", "--resume", str(ctx.run), "--out", str(ctx.tmp / "elsewhere")]


@case("run directory", r"--batch-size cannot change when resuming .*; only ")
def resume_changing_batch_size(ctx: Context) -> list[str]:
    return ["train", "--resume", str(ctx.run), "--batch-size", "8", "--quiet"]


# --- checkpoint ------------------------------------------------------------------------------


@case("checkpoint", r"cannot read weights from .*model\.safetensors \(.*\); the file is damaged")
def weights_truncated(ctx: Context) -> list[str]:
    path = ctx.run / "model.safetensors"
    path.write_bytes(path.read_bytes()[:40])
    return ["sample", str(ctx.run), "--checkpoint", "final"]


@case(
    "checkpoint", r"model\.safetensors do not fit the model in config\.json: .* has shape \[3, 3\]"
)
def weights_wrong_shape(ctx: Context) -> list[str]:
    import torch
    from safetensors.torch import save_file

    from lmforge.runs import load_run

    names = list(load_run(ctx.run, "final").model.state_dict())
    save_file({name: torch.zeros(3, 3) for name in names}, ctx.run / "model.safetensors")
    return ["eval", str(ctx.run), "--checkpoint", "final"]


@case("checkpoint", r"tokenizer\.json has 4 tokens but the model in config\.json has 9")
def tokenizer_vocab_differs(ctx: Context) -> list[str]:
    from lmforge.tokenizers.base import train_tokenizer

    train_tokenizer("char", "abcd").save(ctx.run / "tokenizer.json")
    return ["sample", str(ctx.run), "--length", "5"]


@case("checkpoint", r"has no weights yet \(model\.safetensors is missing\); wait for the first")
def weights_missing(ctx: Context) -> list[str]:
    (ctx.run / "model.safetensors").unlink()
    (ctx.run / "best.safetensors").unlink()
    return ["sample", str(ctx.run)]


@case("checkpoint", r"cannot resume: .*trainer_state\.pt is damaged or not a trainer state")
def trainer_state_damaged(ctx: Context) -> list[str]:
    (ctx.run / "trainer_state.pt").write_bytes(b"not a pickle")
    return ["train", "--resume", str(ctx.run), "--max-steps", "6", "--quiet"]


# --- sampling options ------------------------------------------------------------------------


def sample_argv(ctx: Context, *flags: str) -> list[str]:
    return ["sample", str(ctx.run), "--length", "5", *flags]


@case("sampling", r"--repetition-penalty must be a positive finite number \(1 is off\), got nan")
def repetition_penalty_nan(ctx: Context) -> list[str]:
    return sample_argv(ctx, "--repetition-penalty", "nan")


@case("sampling", r"--repetition-penalty must be a positive finite number \(1 is off\), got 0\.0")
def repetition_penalty_zero(ctx: Context) -> list[str]:
    return sample_argv(ctx, "--repetition-penalty", "0")


@case("sampling", r"--temperature must be a finite number, 0 or more, got inf")
def temperature_inf(ctx: Context) -> list[str]:
    return sample_argv(ctx, "--temperature", "inf")


@case("sampling", r"--temperature must be a finite number, 0 or more, got -1\.0")
def temperature_negative(ctx: Context) -> list[str]:
    return sample_argv(ctx, "--temperature", "-1")


@case("sampling", r"--top-p must be in \(0, 1\], got nan")
def top_p_nan(ctx: Context) -> list[str]:
    return sample_argv(ctx, "--top-p", "nan")


@case("sampling", r"--top-k must be 0 \(off\) or more, got -3")
def top_k_negative(ctx: Context) -> list[str]:
    return sample_argv(ctx, "--top-k", "-3")


@case("sampling", r"--num-samples must be at least 1, got 0")
def num_samples_zero(ctx: Context) -> list[str]:
    return sample_argv(ctx, "--num-samples", "0")


@case("sampling", r"--length must be 0 or more, got -1")
def length_negative(ctx: Context) -> list[str]:
    return ["sample", str(ctx.run), "--length", "-1"]


@case("sampling", r"--stream shows one sample at a time; drop --num-samples")
def stream_many_samples(ctx: Context) -> list[str]:
    return sample_argv(ctx, "--stream", "--num-samples", "2")


# --- command line misuse ---------------------------------------------------------------------


@case("command line", r"^lmforge: error: the following arguments are required: COMMAND; see ")
def no_command(ctx: Context) -> list[str]:
    return []


@case("command line", r"^lmforge train: error: argument --batch-size: invalid int value: 'x'")
def flag_of_wrong_type(ctx: Context) -> list[str]:
    return ["train", "--batch-size", "x"]


@case("command line", r"^lmforge: error: unrecognized arguments: --bogus; see lmforge --help")
def unknown_flag(ctx: Context) -> list[str]:
    return ["sample", str(ctx.run), "--bogus"]


@case("command line", r"argument --checkpoint: invalid choice: 'latest'")
def checkpoint_choice(ctx: Context) -> list[str]:
    return ["sample", str(ctx.run), "--checkpoint", "latest"]


@case("command line", r"give --out RUN_DIR \(or `out` in the config file\)")
def train_without_out(ctx: Context) -> list[str]:
    argv = train_argv(ctx)
    del argv[argv.index("--out") : argv.index("--out") + 2]
    return argv


# --- environment -----------------------------------------------------------------------------


@case("environment", r"--device cuda:7 was asked for, but CUDA is not available; use --device cpu")
def device_cuda_without_cuda(ctx: Context) -> list[str]:
    import torch

    ctx.monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    return sample_argv(ctx, "--device", "cuda:7")


@case("environment", r"--device cuda:7 was asked for, but this machine has 2 CUDA device\(s\)")
def device_cuda_index_too_high(ctx: Context) -> list[str]:
    import torch

    ctx.monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    ctx.monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    return train_argv(ctx, "--device", "cuda:7")


@case("environment", r"unknown device 'tpu'; use auto, cpu, cuda, cuda:N or mps")
def device_unknown(ctx: Context) -> list[str]:
    return sample_argv(ctx, "--device", "tpu")


@case("environment", r"--device mps was asked for, but MPS is not available")
def device_mps_unavailable(ctx: Context) -> list[str]:
    import torch

    ctx.monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    return sample_argv(ctx, "--device", "mps")


# --- the tests -------------------------------------------------------------------------------


def train_small_run(root: Path) -> tuple[Path, Path]:
    """Train a bigram run with both checkpoints and a trainer state under ``root``; return the
    run directory and its corpus."""
    corpus = root / "corpus.txt"
    corpus.write_text(markov_text(3000, alphabet="abcdefg \n"), encoding="utf-8")
    argv = [
        "train",
        "--corpus",
        str(corpus),
        "--model",
        "bigram",
        "--out",
        str(root / "run"),
        "--max-steps",
        "4",
        "--eval-interval",
        "2",
        "--eval-iters",
        "1",
        "--batch-size",
        "4",
        "--block-size",
        "8",
        "--device",
        "cpu",
        "--quiet",
    ]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LMFORGE_CACHE_DIR", str(root / "cache"))
        assert main(argv) == 0
    return root / "run", corpus


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The small run, trained once per module (each case copies it)."""
    return train_small_run(tmp_path_factory.mktemp("catalogue"))


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` with its bytes."""
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def run_case(item: Case, tmp: Path, trained: tuple[Path, Path], mp: pytest.MonkeyPatch) -> None:
    """Set ``item`` up in ``tmp`` and run the CLI in-process; check the exit code and that no
    file under ``tmp`` was written or changed."""
    run, corpus = trained
    shutil.copytree(run, tmp / "run")
    argv = item.setup(Context(tmp, tmp / "run", corpus, mp))
    before = snapshot(tmp)
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's usage errors
        code = exc.code
    assert code == 2, f"{item.id}: exit code {code}"
    after = snapshot(tmp)
    assert {name: after.get(name) for name in before} == before, f"{item.id}: files changed"
    written = [name for name in after if name not in before]
    # a fresh --out may keep the tokenizer of a start that failed later; nothing else appears
    assert all(name.startswith("new-run/") for name in written), f"{item.id} wrote {written}"


@pytest.mark.parametrize("item", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_line_and_exit_2(item, trained_run, tmp_path, monkeypatch, capsys):
    run_case(item, tmp_path, trained_run, monkeypatch)
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert captured.err.endswith("\n")
    assert re.match(r"lmforge( \w+)?: error: ", lines[0]), lines[0]
    assert re.search(item.message, lines[0]), lines[0]


def test_catalogue_is_large_and_documented():
    doc = (REPO / "docs" / "reliability.md").read_text(encoding="utf-8")
    assert len(CASES) >= 30
    assert len({c.id for c in CASES}) == len(CASES)
    missing = [c.id for c in CASES if f"`{c.id}`" not in doc]
    assert not missing, f"cases not in docs/reliability.md: {missing}"


@pytest.mark.parametrize(
    "argv",
    [
        ["tokenize", "train", "{tmp}/missing.txt", "-o", "{tmp}/tok.json"],
        ["train", "--batch-size", "x"],
    ],
    ids=["library-error", "usage-error"],
)
def test_a_real_process_prints_one_line_and_no_traceback(argv, tmp_path):
    argv = [a.format(tmp=tmp_path) for a in argv]
    proc = subprocess.run(
        [sys.executable, "-m", "lmforge", *argv], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.splitlines()) == 1, proc.stderr
    assert proc.stdout == ""


def test_running_out_of_memory_is_one_line_exit_1(trained_run, tmp_path, monkeypatch, capsys):
    def allocator_failure(self):
        raise RuntimeError(
            "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate "
            "memory: you tried to allocate 4361814016 bytes. Error code 12"
        )

    monkeypatch.setattr("lmforge.training.trainer.Trainer.fit", allocator_failure)
    ctx = Context(tmp_path, trained_run[0], trained_run[1], monkeypatch)
    assert main(train_argv(ctx)) == 1
    assert capsys.readouterr().err.splitlines() == [
        "lmforge: error: out of memory (an allocation of 4.4 GB failed): lower --batch-size or "
        "--block-size, use a smaller model or vocabulary, or free memory held by other programs "
        "(checkpoints already saved are kept)"
    ]


def test_other_runtime_errors_still_raise(trained_run, tmp_path, monkeypatch):
    def bug(self):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    monkeypatch.setattr("lmforge.training.trainer.Trainer.fit", bug)
    ctx = Context(tmp_path, trained_run[0], trained_run[1], monkeypatch)
    with pytest.raises(RuntimeError, match="shapes"):
        main(train_argv(ctx))


def print_catalogue() -> None:
    """Print the catalogue as the Markdown table of docs/reliability.md (paths as TMP)."""
    import contextlib
    import io
    import tempfile

    with tempfile.TemporaryDirectory() as root:
        trained = train_small_run(Path(root))
        print("| case | area | what the user sees (stderr, exit code 2) |")
        print("| --- | --- | --- |")
        for n, item in enumerate(CASES):
            tmp = Path(root) / f"case{n}"
            tmp.mkdir()
            err = io.StringIO()
            with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stderr(err):
                mp.setenv("LMFORGE_CACHE_DIR", str(Path(root) / "cache"))
                run_case(item, tmp, trained, mp)
            line = err.getvalue().strip().replace(str(tmp), "TMP").replace("|", "\\|")
            print(f"| `{item.id}` | {item.area} | `` {line} `` |")


if __name__ == "__main__":
    print_catalogue()
