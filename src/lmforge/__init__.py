"""lmforge: build, train, evaluate and sample language models for text generation.

The small public API (imported lazily, so ``import lmforge`` stays light):

>>> import lmforge
>>> run = lmforge.load_run("runs/shakespeare")
>>> lmforge.generate(run.model, run.tokenizer, "ROMEO:", lmforge.SampleConfig(max_new_tokens=100))
>>> lmforge.score(run.model, run.tokenizer, "It is great to hear that", ["you have succeeded"])
>>> lmforge.evaluate_run(run, split="val").bits_per_char
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "load_run": "lmforge.runs",
    "Run": "lmforge.runs",
    "train": "lmforge.training.trainer",
    "TrainResult": "lmforge.training.trainer",
    "resolve_config": "lmforge.config",
    "RunConfig": "lmforge.config",
    "generate": "lmforge.generation",
    "stream": "lmforge.generation",
    "score": "lmforge.generation",
    "SampleConfig": "lmforge.generation",
    "evaluate_run": "lmforge.evaluation",
    "EvalResult": "lmforge.evaluation",
    "load_tokenizer": "lmforge.tokenizers",
    "train_tokenizer": "lmforge.tokenizers",
    "build_model": "lmforge.models",
    "resolve_corpus": "lmforge.data.corpora",
    "LmforgeError": "lmforge.errors",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'lmforge' has no attribute {name!r}")
