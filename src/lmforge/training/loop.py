"""The training loop: maximum likelihood on random windows, with evaluation and checkpoints.

One process, or many under ``torchrun`` (DistributedDataParallel, or FSDP with
``--strategy fsdp``: every rank draws the same global batch from the shared seed and trains on
its own slice; rank 0 logs and writes checkpoints).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lmforge.config import RunConfig, TrainConfig
from lmforge.data.stream import TokenStream, WindowSampler
from lmforge.device import autocast, resolve_dtype
from lmforge.errors import RunError, TrainingError
from lmforge.evaluation import mean_loss
from lmforge.fileio import atomic_copy
from lmforge.losses import batch_loss, unwrap
from lmforge.models.base import LanguageModel
from lmforge.runs import BEST_WEIGHTS, FINAL_WEIGHTS, METRICS_FILE, TRAINER_STATE, save_weights
from lmforge.tokenizers.base import Tokenizer
from lmforge.training import distributed, faults, sharding
from lmforge.training.checkpoint import MetricsLog, save_trainer_state
from lmforge.training.data import fixed_batches
from lmforge.training.distributed import DistributedInfo
from lmforge.training.init_from import freeze
from lmforge.training.optimizer import make_optimizer
from lmforge.training.progress import Progress, say
from lmforge.training.run_dir import run_config_json, write_run_config
from lmforge.training.schedule import learning_rate
from lmforge.training.signals import stop_on_sigint


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
        freeze(self.model, tc.freeze)
        self.sharded = self.info.enabled and tc.strategy == "fsdp"
        if self.sharded and self.dtype == torch.float16:
            raise TrainingError(
                "--strategy fsdp trains in bfloat16 or float32, not float16 (its gradient "
                "scaler is DDP's); use --dtype bfloat16"
            )
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
        self._window: list[torch.Tensor] = []  # training losses since the last metrics record
        self._resumed = False
        self._resumed_record: dict[str, Any] | None = None  # the record of the resumed step
        self._checkpoint_step: int | None = None  # the step trainer_state.pt holds
        self._fault = faults.Fault.from_env(self._interrupt, self.info.is_main)

    @property
    def tokens_per_step(self) -> int:
        """Tokens in one optimizer step: batch × block × accumulated batches."""
        tc = self.train_config
        return tc.batch_size * tc.block_size * tc.grad_accum

    def _wrap(self, model: LanguageModel) -> torch.nn.Module:
        """The module the training step calls: DDP (or the model sharded in place, under
        FSDP) across ranks, then torch.compile."""
        wrapped: torch.nn.Module = model
        if self.sharded:
            sharding.shard(model)
        elif self.info.enabled:
            from torch.nn.parallel import DistributedDataParallel

            device_ids = [self.device.index] if self.device.type == "cuda" else None
            wrapped = DistributedDataParallel(model, device_ids=device_ids)
        if self.train_config.compile:
            wrapped = torch.compile(wrapped)
        return wrapped

    # -- run directory ---------------------------------------------------------------
    def write_run_config(self) -> None:
        """Write config.json (the resolved configuration) and start an empty metrics log."""
        write_run_config(self.run_dir, self.run_config_json())
        self.metrics.reset()

    def run_config_json(self) -> dict[str, Any]:
        """The contents of ``config.json``."""
        return run_config_json(
            self.config, self.model, self.tokenizer, self.stream, self.info.world_size
        )

    # -- resumption ------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly from here (collective under DDP: every rank
        must call it, since each rank's RNG state is kept)."""
        rng = distributed.gather_objects(self.info, torch.get_rng_state())
        # each rank's own losses since the last record: a resumed run's next record averages
        # the same losses as an uninterrupted run's
        window = torch.stack(self._window).cpu() if self._window else torch.zeros(0)
        windows = distributed.gather_objects(self.info, window)
        state: dict[str, Any] = {
            "step": self.step,
            "tokens": self.tokens,
            "elapsed_s": self.elapsed_s,
            "best_val_loss": self.best_val_loss,
            "last_val_loss": self.last_val_loss if self.last_val_loss is not None else math.nan,
            "model": self._model_state(),
            "optimizer": self._optimizer_state(),
            "scaler": self.scaler.state_dict(),
            "sampler": json.dumps(self.sampler.state_dict()),
            "torch_rng": rng,
            "window_losses": windows,
            "reserve_s": self._reserve_s,
        }
        if self.device.type == "cuda":
            state["cuda_rng"] = distributed.gather_objects(
                self.info, torch.cuda.get_rng_state(self.device)
            )
        return state

    def _model_state(self) -> dict[str, torch.Tensor]:
        """The whole weights on the CPU (under FSDP: gathered, on rank 0 only; collective)."""
        if self.sharded:
            return sharding.full_state(self.model)
        return {k: v.detach().cpu() for k, v in self.model.state_dict().items()}

    def _optimizer_state(self) -> dict[str, Any]:
        """The optimizer's state (under FSDP: gathered by parameter name, on rank 0 only;
        collective; empty before the first step, since gathering would take a step)."""
        if not self.sharded:
            return self.optimizer.state_dict()
        if not self.optimizer.state:
            return {}
        return sharding.full_optimizer_state(self.model, self.optimizer)

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from a :meth:`state_dict`."""
        if self.sharded:
            sharding.load_full_state(self.model, self.optimizer, state["model"], state["optimizer"])
        else:
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
        if "window_losses" in state:
            self._window = list(state["window_losses"][self.info.rank].to(self.device))
        self._reserve_s = float(state.get("reserve_s", 0.0))
        self._resumed = True
        self._checkpoint_step = self.step
        if self.info.is_main:
            last = self.metrics.truncate_after(self.step)
            self._resumed_record = last if last and last.get("step") == self.step else None
        self._resumed_record = distributed.broadcast_object(self.info, self._resumed_record)

    # -- the loop --------------------------------------------------------------------
    def fit(self) -> TrainResult:
        """Train until ``max_steps`` or the time budget, evaluating and checkpointing."""
        tc = self.train_config
        self._announce()
        bar = Progress(tc, self.progress, self.step, self.elapsed_s)
        started = time.perf_counter() - self.elapsed_s
        window_start, window_tokens = time.perf_counter(), 0
        step_time = lr = 0.0
        interrupted = False
        try:
            with stop_on_sigint(self._interrupt, bar.say):
                if self.step == 0 and not self._resumed:
                    self._log_initial_losses(started, bar)
                    window_start = time.perf_counter()
                # the stop decision comes right after each step, so that the last step is
                # logged and evaluated once, in the same record
                interrupted, done = self._stop_signals(time.perf_counter() - started, step_time)
                if done and not self._final_step_evaluated():
                    lr = learning_rate(tc, max(self.step - 1, 0), self.elapsed_s)
                    self._evaluate_and_checkpoint(started, self._final_record(lr, step_time))
                while not (interrupted or done):
                    t0 = time.perf_counter()
                    lr = learning_rate(tc, self.step, t0 - started)
                    self._window.append(self._train_step(lr))
                    self.step += 1
                    self.tokens += self.tokens_per_step
                    window_tokens += self.tokens_per_step
                    now = time.perf_counter()
                    step_time = now - t0 if step_time == 0.0 else 0.9 * step_time + 0.1 * (now - t0)
                    self.elapsed_s = now - started
                    bar.advance(now - t0)
                    self._reach("step")
                    interrupted, done = self._stop_signals(now - started, step_time)
                    evaluate = done or self.step % tc.eval_interval == 0
                    if evaluate or self.step % tc.log_interval == 0:
                        rate = window_tokens / max(now - window_start, 1e-9)
                        record = self._record(self._take_window(), lr, rate, step_time)
                        if evaluate:
                            self._evaluate_and_checkpoint(started, record)
                        else:
                            self._append(record)
                        bar.show(record, self.last_val_loss)
                        window_start, window_tokens = time.perf_counter(), 0
                interrupted = interrupted and not done
                if interrupted and self._checkpoint_step != self.step:
                    if self._window:
                        self._check_finite(self._window)
                    self._save_checkpoint(best=False)  # keeps the unrecorded losses
        finally:
            bar.close()
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

    def _final_step_evaluated(self) -> bool:
        """Whether the current step already has its evaluated record (a resumed run that had
        reached its end, or was stopped right after an evaluation)."""
        if self._last_eval_step == self.step:
            return True
        return self._resumed_record is not None and "val_loss" in self._resumed_record

    def _final_record(self, lr: float, step_time: float) -> dict[str, Any]:
        """The record of a run that ends without a step: the current step's own record, if
        it has one without a validation loss (it is written again with one), else a new one."""
        if self._resumed_record is None:
            return self._record(self._take_window(), lr, 0.0, step_time)
        if self.info.is_main:
            self.metrics.truncate_after(self.step - 1)
        return dict(self._resumed_record)

    def _take_window(self) -> float | None:
        """The mean training loss since the last record (checked finite), and a new window."""
        loss = self._check_finite(self._window) if self._window else None
        self._window = []
        return loss

    def _reach(self, point: str) -> None:
        """A fault-injection point (see :mod:`lmforge.training.faults`); a no-op normally."""
        if self._fault is not None:
            self._fault.reached(point, self.step)

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
        """Skip DDP's gradient all-reduce (FSDP's reduce-scatter) on all but the last
        micro-batch of a step."""
        if self.sharded:
            self.model.set_requires_gradient_sync(last)  # type: ignore[operator]
            return contextlib.nullcontext()
        module = self.forward_model
        module = getattr(module, "_orig_mod", module)  # under torch.compile
        if self.info.enabled and not last and hasattr(module, "no_sync"):
            return module.no_sync()
        return contextlib.nullcontext()

    def _stop_signals(self, elapsed: float, step_time: float) -> tuple[bool, bool]:
        """(interrupted, done), agreed by every rank so all stop at the same step."""
        tc = self.train_config
        done = tc.max_steps is not None and self.step >= tc.max_steps
        # a fresh run takes at least one step, however slow its first evaluation was
        if tc.time_budget is not None and self.step > 0:
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
            try:
                self.metrics.append(record)
            except OSError as exc:
                raise TrainingError(
                    f"could not add the record of step {self.step} to {self.metrics.path} "
                    f"({exc.strerror or exc}); {self._kept()}; free some space, then continue "
                    f"with --resume {self.run_dir}"
                ) from None
        self._reach("record")

    def _mean_loss(self, batches: list[tuple[np.ndarray, np.ndarray]]) -> float:
        """The mean loss over ``batches``, shared out among the ranks."""
        mine = batches[self.info.rank :: self.info.world_size]
        mean, count = mean_loss(self.model, mine, self.device, self.dtype)
        if self.sharded:  # each forward gathers weights: every rank must run as many
            missing = -(-len(batches) // self.info.world_size) - len(mine)
            mean_loss(self.model, batches[:missing], self.device, self.dtype)
        totals = torch.tensor([mean * count, float(count)], dtype=torch.float64)
        distributed.all_reduce_sum(self.info, totals)
        return float(totals[0] / totals[1])

    def _log_initial_losses(self, started: float, bar: Progress) -> None:
        """Step 0: the untrained model's train and val loss (≈ ln I for every model)."""
        train_estimate = self._mean_loss(self.train_eval_batches)
        record = self._record(train_estimate, learning_rate(self.train_config, 0), 0.0, 0.0)
        # a checkpoint of the initial weights: it also measures what the final one will cost
        self._evaluate_and_checkpoint(started, record)
        bar.show(record, self.last_val_loss)

    def _evaluate_and_checkpoint(self, started: float, record: dict[str, Any]) -> None:
        """Add the validation loss to ``record``, log it, then write a checkpoint (in that
        order, so every checkpoint's step has its record and a resumed run logs no step
        twice)."""
        t0 = time.perf_counter()
        val = self._mean_loss(self.val_batches)
        self._check_weights(val)
        self.last_val_loss = val
        self._last_eval_step = self.step
        best = val < self.best_val_loss
        if best:
            self.best_val_loss = val
        record["val_loss"] = val
        self._append(record)
        self._save_checkpoint(best=best)
        self.elapsed_s = time.perf_counter() - started
        self._reserve_s = max(self._reserve_s, 1.5 * (time.perf_counter() - t0) + 0.5)
        rate = f", {self.tokens / max(self.elapsed_s, 1e-9):,.0f} tok/s" if self.step else ""
        self._say(f"step {self.step}: val {val:.4f}{' (best)' if best else ''}{rate}")

    def _save_checkpoint(self, best: bool) -> None:
        """Write the weights, the best weights if ``best``, then the trainer state (last: it is
        what --resume reads, so a crash or a full disk part-way keeps the previous one)."""
        self._check_weights(None)
        state = self.state_dict()  # collective: every rank contributes its RNG state
        weights = sharding.full_weights(self.model) if self.sharded else self.model  # collective

        def write() -> None:
            final = self.run_dir / FINAL_WEIGHTS
            try:
                with faults.watching_writes(self._fault, self.step):
                    assert weights is not None  # rank 0 holds the gathered weights
                    save_weights(weights, final, step=self.step, val_loss=self.last_val_loss)
                    self._reach(FINAL_WEIGHTS)
                    if best:
                        atomic_copy(final, self.run_dir / BEST_WEIGHTS)
                        self._reach(BEST_WEIGHTS)
                    save_trainer_state(self.run_dir / TRAINER_STATE, state)
                    self._reach(TRAINER_STATE)
            except OSError as exc:
                raise TrainingError(
                    f"could not write the checkpoint of step {self.step} "
                    f"({exc.strerror or exc}); {self._kept()}; free some space, then continue "
                    f"with --resume {self.run_dir}"
                ) from None

        distributed.run_on_main(self.info, write)  # a failed write stops every rank
        self._checkpoint_step = self.step

    def _kept(self) -> str:
        if self._checkpoint_step is None:
            return "no checkpoint had been written yet"
        return f"the last good checkpoint (step {self._checkpoint_step}) is kept in {self.run_dir}"

    def _check_weights(self, val_loss: float | None) -> None:
        """The NaN guard before a checkpoint: the weights after the last update (and the
        validation loss) must be finite. Every rank holds the same weights (under FSDP each
        checks its shard and all hear of the first broken one), so all agree."""
        broken = next(
            (
                name
                for name, p in self.model.named_parameters()
                if not torch.isfinite(sharding.local(p)).all()
            ),
            None,
        )
        if self.sharded:
            broken = next(filter(None, distributed.gather_objects(self.info, broken)), None)
        if broken is not None:
            problem = f"the weights ({broken}) became infinite or NaN by step {self.step}"
        elif val_loss is not None and not math.isfinite(val_loss):
            problem = f"the validation loss became {val_loss} at step {self.step}"
        else:
            return
        raise TrainingError(
            f"{problem}; {self._kept()}; lower --learning-rate, use --dtype float32, "
            "or check the data"
        )

    def _check_finite(self, losses: list[torch.Tensor]) -> float:
        total = torch.stack(losses).mean().detach().float().cpu().reshape(1)
        distributed.all_reduce_sum(self.info, total)
        value = float(total[0]) / self.info.world_size
        if not math.isfinite(value):
            raise TrainingError(
                f"the training loss became {value} by step {self.step}; {self._kept()}; "
                "lower --learning-rate, use --dtype float32, or check the data"
            )
        return value

    def _announce(self) -> None:
        n_train = self.stream.num_tokens("train")
        per_step = self.tokens_per_step
        ranks = f" × {self.info.world_size} processes" if self.info.enabled else ""
        ranks += " (fsdp)" if self.sharded else ""
        self._say(
            f"{self.model.family}: {self.model.num_parameters():,} parameters on "
            f"{self.device}{ranks}; vocabulary {self.tokenizer.vocab_size}; "
            f"train {n_train:,} tokens, val {self.stream.num_tokens('val'):,} tokens; "
            f"{per_step:,} tokens/step, one epoch ≈ {n_train / per_step:,.0f} steps"
        )
        if self.train_config.init_from is not None:
            frozen = "".join(f", {part} frozen" for part in self.train_config.freeze)
            self._say(f"fine-tuning from {self.train_config.init_from}{frozen}")
        if self._resumed and cudnn_dropout(unwrap(self.model), self.device):
            self._say(
                "note: on a GPU this run resumes close to, not exactly on, the path it would "
                "have taken: cuDNN draws the dropout between recurrent layers from a random "
                "state of its own, which cannot be saved"
            )

    def _say(self, message: str) -> None:
        say(self.progress, message)


def cudnn_dropout(model: torch.nn.Module, device: torch.device) -> bool:
    """Whether ``model`` trains on ``device`` with dropout drawn by cuDNN (between the layers
    of a multi-layer RNN / GRU / LSTM on a GPU), whose random state torch cannot save."""
    from lmforge.models.recurrent import RecurrentLM

    if device.type != "cuda" or not torch.backends.cudnn.enabled:
        return False
    return isinstance(model, RecurrentLM) and model.config.n_layer > 1 and model.config.dropout > 0
