"""The training loop: maximum likelihood on random windows, with evaluation and checkpoints.

One process, or many under ``torchrun`` (DistributedDataParallel: every rank draws the same
global batch from the shared seed and trains on its own slice; rank 0 tokenizes, logs and
writes checkpoints while the others wait for it).

>>> from lmforge.config import resolve_config
>>> result = train(resolve_config({"out": "runs/x", "model": {"family": "lstm"},
...                                "train": {"time_budget": 600}}))
>>> result.best_val_loss
1.49
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from lmforge import __version__
from lmforge.config import RunConfig, TrainConfig
from lmforge.data.corpora import resolve_corpus
from lmforge.data.stream import TokenStream, WindowSampler, encode_corpus, stream_key
from lmforge.device import autocast, resolve_dtype
from lmforge.errors import ConfigError, RunError, TrainingError
from lmforge.evaluation import mean_loss
from lmforge.fileio import atomic_write_json
from lmforge.losses import batch_loss
from lmforge.models.base import LanguageModel, build_model
from lmforge.runs import (
    BEST_WEIGHTS,
    CONFIG_FILE,
    FINAL_WEIGHTS,
    METRICS_FILE,
    SCHEMA_VERSION,
    TOKENIZER_FILE,
    TRAINER_STATE,
    read_run_config,
    save_weights,
)
from lmforge.tokenizers.base import Tokenizer, load_tokenizer
from lmforge.tokenizers.build import build_tokenizer
from lmforge.training import distributed
from lmforge.training.checkpoint import MetricsLog, load_trainer_state, save_trainer_state
from lmforge.training.distributed import DistributedInfo
from lmforge.training.schedule import learning_rate


@dataclasses.dataclass
class TrainResult:
    """What a finished (or interrupted) run reports."""

    run_dir: Path
    steps: int
    tokens: int
    elapsed_s: float
    val_loss: float | None
    best_val_loss: float | None
    interrupted: bool = False
    main_process: bool = True


def prepare_data(
    config: RunConfig, progress: bool = True, tokenizer: Tokenizer | None = None
) -> tuple[Tokenizer, TokenStream]:
    """Resolve the corpus, build (or take) the tokenizer and encode the corpus (cached)."""
    corpus = resolve_corpus(config.data.corpus, config.data.data_dir)
    if tokenizer is None:
        tokenizer = build_tokenizer(
            config.tokenizer, corpus, config.data.val_fraction, progress=progress
        )
    stream = encode_corpus(
        corpus, tokenizer, val_fraction=config.data.val_fraction, progress=progress
    )
    return tokenizer, stream


def train(
    config: RunConfig,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> TrainResult:
    """Train the model ``config`` describes; write the run directory ``config.out``.

    ``resume=True`` continues the run saved in ``config.out`` exactly where it stopped.
    Without it, an existing run directory is an error unless ``overwrite=True``.
    Under ``torchrun`` this runs on every rank.
    """
    with distributed.process_group(config.train.device) as info:
        return _train(config, info, resume, overwrite, progress)


def _train(
    config: RunConfig, info: DistributedInfo, resume: bool, overwrite: bool, progress: bool
) -> TrainResult:
    run_dir = Path(config.out)

    def prepare_on_main() -> tuple[Tokenizer, TokenStream]:
        _check_run_dir(run_dir, resume, overwrite)
        for torn in run_dir.glob(".*.tmp"):  # left by a process killed mid-write
            torn.unlink()
        if not resume:
            tokenizer, stream = prepare_data(config, progress)
            _clear_run_dir(run_dir)
            tokenizer.save(run_dir / TOKENIZER_FILE)
            return tokenizer, stream
        # the run's own tokenizer, not trained again; the stream key hashes the corpus text
        tokenizer = load_tokenizer(run_dir / TOKENIZER_FILE)
        corpus = resolve_corpus(config.data.corpus, config.data.data_dir)
        recorded = read_run_config(run_dir).get("token_stream")
        if recorded not in (None, stream_key(corpus, tokenizer, config.data.val_fraction)):
            raise RunError(
                f"cannot resume {run_dir}: the corpus changed since the run started; resume "
                "with the original text"
            )
        return prepare_data(config, progress, tokenizer=tokenizer)

    prepared = distributed.run_on_main(info, prepare_on_main)
    if info.is_main:
        tokenizer, stream = prepared
    else:  # rank 0 wrote the tokenizer and encoded the corpus into the shared cache
        tokenizer, stream = prepare_data(
            config, progress=False, tokenizer=load_tokenizer(run_dir / TOKENIZER_FILE)
        )
    torch.manual_seed(config.train.seed)
    model = build_model(vocab_size=tokenizer.vocab_size, **config.model)
    if info.rank > 0:
        torch.manual_seed(config.train.seed + 1000 * info.rank)  # own dropout noise per rank
    trainer = Trainer(config, model, tokenizer, stream, info, progress=progress and info.is_main)
    if resume:
        trainer.restore(load_trainer_state(run_dir / TRAINER_STATE))
    elif info.is_main:
        trainer.write_run_config()
    distributed.barrier(info)
    return trainer.fit()


def resume_config(run_dir: str | Path, overrides: dict[str, Any] | None = None) -> RunConfig:
    """The configuration of a saved run, with the few settings that may change on resume
    (``max_steps``, ``time_budget``, ``eval_interval``, ``log_interval``, ``device``)."""
    saved = read_run_config(run_dir)
    config = RunConfig.from_dict({**saved["run"], "out": str(run_dir)})
    allowed = {"max_steps", "time_budget", "eval_interval", "log_interval", "device"}
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if key not in allowed:
            raise ConfigError(
                f"--{key.replace('_', '-')} cannot change when resuming (it would break exact "
                f"resumption); only {', '.join(sorted(allowed))} can"
            )
        setattr(config.train, key, value)
    config.train.validate()
    return config


def _check_run_dir(run_dir: Path, resume: bool, overwrite: bool) -> None:
    exists = (run_dir / CONFIG_FILE).is_file()
    if resume and not exists:
        raise RunError(f"cannot resume {run_dir}: it holds no run; start one with --out {run_dir}")
    if not resume and exists and not overwrite:
        raise RunError(
            f"{run_dir} already holds a run; continue it with --resume {run_dir}, choose another "
            "--out, or pass --overwrite to replace it"
        )
    if run_dir.exists() and not run_dir.is_dir():
        raise RunError(f"--out {run_dir} is a file; choose a directory")


def _clear_run_dir(run_dir: Path) -> None:
    """Make ``run_dir`` and remove the checkpoints of a run being overwritten."""
    run_dir.mkdir(parents=True, exist_ok=True)
    for name in (BEST_WEIGHTS, FINAL_WEIGHTS, TRAINER_STATE, CONFIG_FILE):
        (run_dir / name).unlink(missing_ok=True)


_TIME_BAR = "{l_bar}{bar}| {n:.0f}/{total_fmt}s [{elapsed}<{remaining}{postfix}]"


class Trainer:
    """One training run: model, optimizer, sampler, schedule, evaluation and checkpoints."""

    def __init__(
        self,
        config: RunConfig,
        model: LanguageModel,
        tokenizer: Tokenizer,
        stream: TokenStream,
        info: DistributedInfo | None = None,
        progress: bool = True,
    ) -> None:
        self.config = config
        self.train_config: TrainConfig = config.train
        tc = self.train_config
        self.info = info or DistributedInfo(device=torch.device("cpu"))
        self.device = self.info.device
        self.run_dir = Path(config.out)
        self.tokenizer = tokenizer
        self.stream = stream
        self.dtype = resolve_dtype(tc.dtype, self.device)
        self.progress = progress
        self.model = model.to(self.device)
        self.forward_model = self._wrap(self.model)
        self.optimizer = make_optimizer(self.model, tc, self.device)
        self.scaler = torch.amp.GradScaler(
            self.device.type, enabled=self.dtype == torch.float16 and self.device.type == "cuda"
        )
        train_tokens = stream.tokens("train")
        self.sampler = WindowSampler(
            train_tokens,
            tc.batch_size,
            tc.block_size,
            seed=tc.seed,
            rank=self.info.rank,
            world_size=self.info.world_size,
        )
        self.val_batches = fixed_batches(stream.tokens("val"), tc, seed=tc.seed + 1, split="val")
        self.train_eval_batches = fixed_batches(train_tokens, tc, seed=tc.seed + 2, split="train")
        self.metrics = MetricsLog(self.run_dir / METRICS_FILE)
        self.step = 0
        self.tokens = 0
        self.elapsed_s = 0.0
        self.best_val_loss = math.inf
        self.last_val_loss: float | None = None
        self._interrupt = threading.Event()
        self._reserve_s = 0.0  # time the final evaluation + checkpoint is expected to take
        self._last_eval_step = -1

    @property
    def tokens_per_step(self) -> int:
        """Tokens in one optimizer step: batch × block × accumulated batches."""
        tc = self.train_config
        return tc.batch_size * tc.block_size * tc.grad_accum

    def _wrap(self, model: LanguageModel) -> torch.nn.Module:
        """The module the training step calls: DDP across ranks, then torch.compile."""
        wrapped: torch.nn.Module = model
        if self.info.enabled:
            from torch.nn.parallel import DistributedDataParallel

            device_ids = [self.device.index] if self.device.type == "cuda" else None
            wrapped = DistributedDataParallel(model, device_ids=device_ids)
        if self.train_config.compile:
            wrapped = torch.compile(wrapped)
        return wrapped

    # -- run directory ---------------------------------------------------------------
    def write_run_config(self) -> None:
        """Write config.json (the resolved configuration) and start an empty metrics log."""
        atomic_write_json(self.run_dir / CONFIG_FILE, self.run_config_json())
        self.metrics.reset()

    def run_config_json(self) -> dict[str, Any]:
        """The contents of ``config.json``."""
        return {
            "schema_version": SCHEMA_VERSION,
            "lmforge_version": __version__,
            "model": self.model.config_dict(),
            "vocab_size": self.tokenizer.vocab_size,
            "tokenizer_kind": self.tokenizer.kind,
            "block_size": self.train_config.block_size,
            "parameters": self.model.num_parameters(),
            "corpus": self.config.data.corpus,
            "data": {
                split: {
                    "tokens": self.stream.num_tokens(split),
                    "chars": self.stream.num_chars(split),
                }
                for split in self.stream.splits
            },
            "token_stream": self.stream.directory.name,
            "world_size": self.info.world_size,
            "run": self.config.to_dict(),
        }

    # -- resumption ------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly from here (collective under DDP: every rank
        must call it, since each rank's RNG state is kept)."""
        rng = distributed.gather_objects(self.info, torch.get_rng_state())
        state: dict[str, Any] = {
            "step": self.step,
            "tokens": self.tokens,
            "elapsed_s": self.elapsed_s,
            "best_val_loss": self.best_val_loss,
            "last_val_loss": self.last_val_loss if self.last_val_loss is not None else math.nan,
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "sampler": json.dumps(self.sampler.state_dict()),
            "torch_rng": rng,
        }
        if self.device.type == "cuda":
            state["cuda_rng"] = distributed.gather_objects(
                self.info, torch.cuda.get_rng_state(self.device)
            )
        return state

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from a :meth:`state_dict`."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.sampler.load_state_dict(json.loads(state["sampler"]))
        rng = state["torch_rng"]
        if len(rng) != self.info.world_size:
            raise RunError(
                f"cannot resume {self.run_dir} exactly: it ran with {len(rng)} process(es), "
                f"now {self.info.world_size}; resume with the same number of processes"
            )
        torch.set_rng_state(rng[self.info.rank])
        if "cuda_rng" in state and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"][self.info.rank], self.device)
        self.step = int(state["step"])
        self.tokens = int(state["tokens"])
        self.elapsed_s = float(state["elapsed_s"])
        self.best_val_loss = float(state["best_val_loss"])
        last = float(state["last_val_loss"])
        self.last_val_loss = None if math.isnan(last) else last
        if self.info.is_main:
            self.metrics.truncate_after(self.step)

    # -- the loop --------------------------------------------------------------------
    def fit(self) -> TrainResult:
        """Train until ``max_steps`` or the time budget, evaluating and checkpointing."""
        tc = self.train_config
        self._announce()
        previous_handler = self._install_sigint_handler()
        bar = self._progress_bar()
        started = time.perf_counter() - self.elapsed_s
        window_start, window_tokens, window_losses = time.perf_counter(), 0, []
        step_time = 0.0
        tokens_per_step = self.tokens_per_step
        interrupted = False
        try:
            if self.step == 0:
                self._log_initial_losses(started, bar)
                window_start = time.perf_counter()
            while True:
                interrupted, stop = self._stop_signals(time.perf_counter() - started, step_time)
                if interrupted or stop:
                    break
                t0 = time.perf_counter()
                lr = learning_rate(tc, self.step, t0 - started)
                window_losses.append(self._train_step(lr))
                self.step += 1
                self.tokens += tokens_per_step
                window_tokens += tokens_per_step
                now = time.perf_counter()
                step_time = now - t0 if step_time == 0.0 else 0.9 * step_time + 0.1 * (now - t0)
                self.elapsed_s = now - started
                self._advance_bar(bar, now - t0)
                if self.step % tc.log_interval == 0 or self.step % tc.eval_interval == 0:
                    train_loss = self._check_finite(window_losses)
                    rate = window_tokens / max(now - window_start, 1e-9)
                    record = self._record(train_loss, lr, rate, step_time)
                    if self.step % tc.eval_interval == 0:
                        record.update(self._evaluate_and_checkpoint(started))
                    self._append(record)
                    bar.set_postfix(self._postfix(record), refresh=False)
                    window_start, window_tokens, window_losses = time.perf_counter(), 0, []
            if window_losses:
                train_loss = self._check_finite(window_losses)
            if interrupted:
                self._save_checkpoint(best=False)
            elif self._last_eval_step != self.step:
                rate = window_tokens / max(time.perf_counter() - window_start, 1e-9)
                lr = learning_rate(tc, max(self.step - 1, 0), self.elapsed_s)
                record = self._record(train_loss if window_losses else None, lr, rate, step_time)
                record.update(self._evaluate_and_checkpoint(started))
                self._append(record)
        finally:
            bar.close()
            if previous_handler is not None:
                signal.signal(signal.SIGINT, previous_handler)
        return TrainResult(
            run_dir=self.run_dir,
            steps=self.step,
            tokens=self.tokens,
            elapsed_s=self.elapsed_s,
            val_loss=self.last_val_loss,
            best_val_loss=self.best_val_loss if math.isfinite(self.best_val_loss) else None,
            interrupted=interrupted,
            main_process=self.info.is_main,
        )

    def _train_step(self, lr: float) -> torch.Tensor:
        tc = self.train_config
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        total = torch.zeros((), device=self.device)
        for micro in range(tc.grad_accum):
            x_np, y_np = self.sampler.next_batch()
            x = torch.from_numpy(x_np).to(self.device, non_blocking=True)
            y = torch.from_numpy(y_np).to(self.device, non_blocking=True)
            with self._no_sync(last=micro == tc.grad_accum - 1), autocast(self.device, self.dtype):
                loss = batch_loss(self.forward_model, x, y)
            self.scaler.scale(loss / tc.grad_accum).backward()
            total += loss.detach()
        if tc.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), tc.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return total / tc.grad_accum

    def _no_sync(self, last: bool) -> Any:
        """Skip DDP's gradient all-reduce on all but the last micro-batch of a step."""
        module = self.forward_model
        module = getattr(module, "_orig_mod", module)  # under torch.compile
        if self.info.enabled and not last and hasattr(module, "no_sync"):
            return module.no_sync()
        return contextlib.nullcontext()

    def _stop_signals(self, elapsed: float, step_time: float) -> tuple[bool, bool]:
        """(interrupted, done), agreed by every rank so all stop at the same step."""
        tc = self.train_config
        done = tc.max_steps is not None and self.step >= tc.max_steps
        if tc.time_budget is not None:
            done = done or elapsed + 2 * step_time + self._reserve_s >= tc.time_budget
        flags = torch.tensor([float(self._interrupt.is_set()), float(done)])
        distributed.all_reduce_max(self.info, flags)
        return bool(flags[0]), bool(flags[1])

    def _record(
        self, train_loss: float | None, lr: float, rate: float, step_time: float
    ) -> dict[str, Any]:
        return {
            "step": self.step,
            "train_loss": train_loss,
            "tokens": self.tokens,
            "tokens_per_s": round(rate, 1),
            "step_time_s": round(step_time, 5),
            "lr": lr,
            "elapsed_s": round(self.elapsed_s, 3),
        }

    def _append(self, record: dict[str, Any]) -> None:
        if self.info.is_main:
            self.metrics.append(record)

    def _mean_loss(self, batches: list[tuple[np.ndarray, np.ndarray]]) -> float:
        """The mean loss over ``batches``, shared out among the ranks."""
        mine = batches[self.info.rank :: self.info.world_size]
        mean, count = mean_loss(self.model, mine, self.device, self.dtype)
        totals = torch.tensor([mean * count, float(count)], dtype=torch.float64)
        distributed.all_reduce_sum(self.info, totals)
        return float(totals[0] / totals[1])

    def _log_initial_losses(self, started: float, bar: tqdm) -> None:
        """Step 0: the untrained model's train and val loss (≈ ln I for every model)."""
        train_estimate = self._mean_loss(self.train_eval_batches)
        record = self._record(train_estimate, learning_rate(self.train_config, 0), 0.0, 0.0)
        # a checkpoint of the initial weights: it also measures what the final one will cost
        record.update(self._evaluate_and_checkpoint(started))
        self._append(record)
        bar.set_postfix(self._postfix(record), refresh=False)

    def _evaluate_and_checkpoint(self, started: float) -> dict[str, Any]:
        t0 = time.perf_counter()
        val = self._mean_loss(self.val_batches)
        self.last_val_loss = val
        self._last_eval_step = self.step
        best = val < self.best_val_loss
        if best:
            self.best_val_loss = val
        self._save_checkpoint(best=best)
        self.elapsed_s = time.perf_counter() - started
        self._reserve_s = max(self._reserve_s, 1.5 * (time.perf_counter() - t0) + 0.5)
        rate = f", {self.tokens / max(self.elapsed_s, 1e-9):,.0f} tok/s" if self.step else ""
        self._say(f"step {self.step}: val {val:.4f}{' (best)' if best else ''}{rate}")
        return {"val_loss": val}

    def _save_checkpoint(self, best: bool) -> None:
        state = self.state_dict()  # collective: every rank contributes its RNG state
        if not self.info.is_main:
            return
        meta = {"step": self.step, "val_loss": self.last_val_loss}
        save_trainer_state(self.run_dir / TRAINER_STATE, state)
        save_weights(self.model, self.run_dir / FINAL_WEIGHTS, **meta)
        if best:
            staged = self.run_dir / f".{BEST_WEIGHTS}.tmp"
            shutil.copyfile(self.run_dir / FINAL_WEIGHTS, staged)
            staged.replace(self.run_dir / BEST_WEIGHTS)

    def _check_finite(self, losses: list[torch.Tensor]) -> float:
        total = torch.stack(losses).mean().detach().float().cpu().reshape(1)
        distributed.all_reduce_sum(self.info, total)
        value = float(total[0]) / self.info.world_size
        if not math.isfinite(value):
            kept = (
                f"the last good checkpoint is kept in {self.run_dir}"
                if (self.run_dir / FINAL_WEIGHTS).is_file()
                else "no checkpoint had been written yet"
            )
            raise TrainingError(
                f"the training loss became {value} by step {self.step}; {kept}; "
                "lower --learning-rate, use --dtype float32, or check the data"
            )
        return value

    # -- presentation ----------------------------------------------------------------
    def _announce(self) -> None:
        n_train = self.stream.num_tokens("train")
        per_step = self.tokens_per_step
        ranks = f" × {self.info.world_size} processes" if self.info.enabled else ""
        self._say(
            f"{self.model.family}: {self.model.num_parameters():,} parameters on "
            f"{self.device}{ranks}; vocabulary {self.tokenizer.vocab_size}; "
            f"train {n_train:,} tokens, val {self.stream.num_tokens('val'):,} tokens; "
            f"{per_step:,} tokens/step, one epoch ≈ {n_train / per_step:,.0f} steps"
        )

    def _say(self, message: str) -> None:
        if self.progress:
            tqdm.write(message, file=sys.stderr)

    def _progress_bar(self) -> tqdm:
        tc = self.train_config
        disable = None if self.progress else True
        if tc.max_steps is not None:
            return tqdm(
                total=tc.max_steps,
                initial=self.step,
                desc="training",
                unit="step",
                disable=disable,
                dynamic_ncols=True,
            )
        return tqdm(
            total=round(tc.time_budget or 0),
            initial=round(self.elapsed_s),
            desc="training",
            unit="s",
            disable=disable,
            dynamic_ncols=True,
            bar_format=_TIME_BAR,
        )

    def _advance_bar(self, bar: tqdm, seconds: float) -> None:
        bar.update(1 if self.train_config.max_steps is not None else seconds)

    def _postfix(self, record: dict[str, Any]) -> dict[str, str]:
        postfix = {"step": str(record["step"])}
        if record.get("train_loss") is not None:
            postfix["loss"] = f"{record['train_loss']:.4f}"
        if self.last_val_loss is not None:
            postfix["val"] = f"{self.last_val_loss:.4f}"
        if record.get("tokens_per_s"):
            postfix["tok/s"] = f"{record['tokens_per_s']:,.0f}"
            postfix["ms/step"] = f"{1000 * record['step_time_s']:.0f}"
        postfix["lr"] = f"{record['lr']:.2e}"
        return postfix

    def _install_sigint_handler(self) -> Any:
        if threading.current_thread() is not threading.main_thread():
            return None

        def handler(signum: int, frame: Any) -> None:
            if self._interrupt.is_set():
                raise KeyboardInterrupt
            self._interrupt.set()
            if self.progress:
                tqdm.write(
                    "stopping after this step to save a checkpoint (Ctrl-C again to abort)",
                    file=sys.stderr,
                )

        return signal.signal(signal.SIGINT, handler)


def make_optimizer(
    model: LanguageModel, config: TrainConfig, device: torch.device
) -> torch.optim.Optimizer:
    """AdamW or SGD; weight decay applies to matrices only (not biases or norm gains)."""
    params = {id(p): p for p in model.parameters() if p.requires_grad}.values()
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    groups = [g for g in groups if g["params"]]
    fused = device.type in ("cpu", "cuda")  # one kernel per step instead of a dozen passes
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            groups, lr=config.learning_rate, momentum=config.momentum, fused=fused
        )
    return torch.optim.AdamW(
        groups, lr=config.learning_rate, betas=(config.beta1, config.beta2), fused=fused
    )


def fixed_batches(
    tokens: np.ndarray, config: TrainConfig, seed: int, split: str
) -> list[tuple[np.ndarray, np.ndarray]]:
    """``eval_iters`` batches of random windows drawn once, so that every periodic evaluation
    scores the same windows and the curve is not noise."""
    block = min(config.block_size, len(tokens) - 1)
    if block < 1:
        raise TrainingError(
            f"the {split} split has {len(tokens)} token(s), too few to evaluate; "
            "give a longer corpus or a larger --val-fraction"
        )
    sampler = WindowSampler(tokens, config.batch_size, block, seed=seed, split=split)
    return [sampler.next_batch() for _ in range(config.eval_iters)]
