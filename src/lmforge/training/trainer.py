"""``train()``: set up a run (data on rank 0, the model, the run directory) and hand it to the
training loop.

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

from pathlib import Path

import torch

from lmforge.config import RunConfig
from lmforge.data.corpora import resolve_corpus
from lmforge.data.stream import TokenStream, stream_key
from lmforge.errors import RunError
from lmforge.models.base import build_model
from lmforge.runs import TOKENIZER_FILE, TRAINER_STATE, read_run_config
from lmforge.tokenizers.base import Tokenizer, load_tokenizer
from lmforge.training import distributed
from lmforge.training.checkpoint import load_trainer_state
from lmforge.training.data import fixed_batches, prepare_data
from lmforge.training.distributed import DistributedInfo
from lmforge.training.init_from import load_initial_weights
from lmforge.training.loop import Trainer, TrainResult
from lmforge.training.memory import check_training_memory
from lmforge.training.optimizer import make_optimizer
from lmforge.training.run_dir import (
    check_run_dir,
    clear_run_dir,
    remove_torn_writes,
    resume_config,
    save_resumed_settings,
)

__all__ = [
    "TrainResult",
    "Trainer",
    "fixed_batches",
    "make_optimizer",
    "prepare_data",
    "resume_config",
    "train",
]


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

    def check_fits(tokenizer: Tokenizer) -> None:
        with torch.device("meta"):  # the shapes only: nothing allocated
            shape = build_model(vocab_size=tokenizer.vocab_size, **config.model)
        check_training_memory(shape, config.train, info.device, info.world_size)

    def prepare_on_main() -> tuple[Tokenizer, TokenStream]:
        check_run_dir(run_dir, resume, overwrite)
        remove_torn_writes(run_dir)
        if not resume:
            tokenizer, stream = prepare_data(config, progress)
            check_fits(tokenizer)  # before the previous run (with --overwrite) is cleared
            clear_run_dir(run_dir)
            tokenizer.save(run_dir / TOKENIZER_FILE)
            return tokenizer, stream
        # the run's own tokenizer, not trained again; the stream key hashes the corpus text
        tokenizer = load_tokenizer(run_dir / TOKENIZER_FILE)
        corpus = resolve_corpus(config.data.corpus, config.data.data_dir)
        recorded = read_run_config(run_dir).get("token_stream")
        key = stream_key(corpus, tokenizer, config.data.val_fraction, config.tokenizer.special_text)
        if recorded not in (None, key):
            raise RunError(
                f"cannot resume {run_dir}: the corpus changed since the run started; resume "
                "with the original text"
            )
        check_fits(tokenizer)
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
    if config.train.init_from is not None and not resume:  # a resumed run has its own weights
        load_initial_weights(model, config.train.init_from)
    if info.rank > 0:
        torch.manual_seed(config.train.seed + 1000 * info.rank)  # own dropout noise per rank
    trainer = Trainer(config, model, tokenizer, stream, info, progress=progress and info.is_main)
    if resume:
        trainer.restore(load_trainer_state(run_dir / TRAINER_STATE))
        if info.is_main:
            save_resumed_settings(run_dir, config)
    elif info.is_main:
        trainer.write_run_config()
    distributed.barrier(info)
    return trainer.fit()
