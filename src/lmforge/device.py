"""Picking the device and the autocast dtype."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from lmforge.errors import ConfigError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def pick_device(requested: str | None = None) -> torch.device:
    """``requested`` if given (``cpu``, ``cuda``, ``cuda:1``, ``mps``), else the best available:
    cuda, then mps, then cpu.

    >>> pick_device("cpu")
    device(type='cpu')
    """
    if requested in (None, "", "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise ConfigError(
            f"unknown device {requested!r}; use auto, cpu, cuda, cuda:N or mps"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"--device {requested} was asked for, but CUDA is not available; use --device cpu"
        )
    if device.type == "cuda" and device.index is not None:
        count = torch.cuda.device_count()
        if device.index >= count:
            raise ConfigError(
                f"--device {requested} was asked for, but this machine has {count} CUDA "
                f"device(s), cuda:0 to cuda:{count - 1}; pick one of those or --device cuda"
            )
    if device.type == "mps" and not (
        getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
    ):
        raise ConfigError("--device mps was asked for, but MPS is not available; use --device cpu")
    return device


def model_device(model: torch.nn.Module) -> torch.device:
    """Where ``model``'s parameters live (the CPU for a model without any).

    >>> model_device(torch.nn.Linear(2, 2))
    device(type='cpu')
    """
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def native_bfloat16(device: torch.device) -> bool:
    """Whether ``device`` computes in bfloat16 natively (CUDA with bf16 support; CPUs with
    AVX512-BF16 or AMX), so that bfloat16 autocast makes training faster, not slower."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        return any(getattr(torch.cpu, name, lambda: False)() for name in checks)
    return False


def resolve_dtype(name: str, device: torch.device | None = None) -> torch.dtype:
    """The torch dtype for ``float32`` / ``bfloat16`` / ``float16``, or for ``auto``:
    bfloat16 where the device computes it natively, else float32.

    >>> resolve_dtype("auto", torch.device("cpu"))  # on a CPU with AVX512-BF16
    torch.bfloat16
    """
    if name == "auto":
        return torch.bfloat16 if device is not None and native_bfloat16(device) else torch.float32
    if name not in DTYPES:
        raise ConfigError(f"unknown dtype {name!r}; choose auto or one of {', '.join(DTYPES)}")
    return DTYPES[name]


@contextlib.contextmanager
def autocast(device: torch.device, dtype: torch.dtype) -> Iterator[None]:
    """Mixed precision for ``dtype`` on ``device``; nothing for float32."""
    if dtype == torch.float32:
        yield
        return
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield
