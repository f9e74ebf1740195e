"""The training-memory lower bound: its parts are exact byte counts, and a run that cannot fit
is refused before anything is allocated or the previous run is touched."""

from __future__ import annotations

import pytest
import torch

from lmforge.config import TrainConfig
from lmforge.errors import ConfigError
from lmforge.models.base import build_model
from lmforge.training import memory
from lmforge.training.memory import check_training_memory, training_memory

WT2_WORDS = 33278


def meta_model(family: str, vocab: int = WT2_WORDS, **options):
    with torch.device("meta"):
        return build_model(family, vocab_size=vocab, **options)


def test_word_bigram_with_its_defaults_needs_26_gigabytes() -> None:
    need = training_memory(meta_model("bigram"), TrainConfig(batch_size=256, block_size=128))
    table = WT2_WORDS * WT2_WORDS * 4
    assert (need.weights, need.gradients, need.optimizer) == (table, table, 2 * table)
    assert need.logits == 256 * 128 * WT2_WORDS * 4 * 2
    assert need.total == 4 * table + need.logits
    assert round(need.total / 1e9, 1) == 26.4
    assert need.describe() == "weights 4.4 GB, gradients 4.4 GB, optimizer 8.9 GB, logits 8.7 GB"


def test_a_fused_head_makes_no_logits_but_a_small_vocabulary_does() -> None:
    config = TrainConfig(batch_size=64, block_size=128)
    assert training_memory(meta_model("lstm"), config).logits == 0  # 33,278 ≥ 4096: fused
    small = training_memory(meta_model("lstm", vocab=65), config)
    assert small.logits == 64 * 128 * 65 * 4 * 2


def test_optimizer_state_freezing_and_sharding() -> None:
    model = meta_model("context", n_embd=256)
    weights = training_memory(model, TrainConfig()).weights
    assert training_memory(model, TrainConfig(optimizer="sgd", momentum=0.0)).optimizer == 0
    assert training_memory(model, TrainConfig(optimizer="sgd")).optimizer == weights
    frozen = training_memory(model, TrainConfig(freeze=["embeddings"]))
    assert (frozen.gradients, frozen.optimizer) == (0, 0)
    sharded = training_memory(model, TrainConfig(strategy="fsdp", batch_size=64), world_size=4)
    assert sharded.weights == weights // 4


def test_the_check_names_the_numbers_and_the_fixes(monkeypatch) -> None:
    monkeypatch.setattr(memory, "available_memory", lambda device: 18_500_000_000)
    config = TrainConfig(batch_size=256, block_size=16)  # the context family's defaults
    with pytest.raises(ConfigError) as caught:
        check_training_memory(meta_model("context"), config, torch.device("cpu"))
    assert str(caught.value) == (
        "training needs at least 18.8 GB (weights 4.4 GB, gradients 4.4 GB, optimizer 8.9 GB, "
        "logits 1.1 GB; 1,107,425,284 parameters, 33,278-token vocabulary) but cpu has 18.5 GB "
        "free: lower --batch-size or --block-size, or set --n-embd (e.g. 256), or use a smaller "
        "model or vocabulary (e.g. --tokenizer bpe)"
    )
    fits = TrainConfig(batch_size=32, block_size=35)  # 18.0 GB: the ladder's word bigram
    check_training_memory(meta_model("bigram"), fits, torch.device("cpu"))


def test_unknown_free_memory_is_no_refusal(monkeypatch) -> None:
    monkeypatch.setattr(memory, "MEMINFO", memory.Path("/nonexistent/meminfo"))
    assert memory.available_memory(torch.device("cpu")) is None
    too_big = TrainConfig(batch_size=256, block_size=128)
    check_training_memory(meta_model("bigram"), too_big, torch.device("cpu"))
