"""User-facing errors: each carries one line that names the problem and the fix.

The CLI prints ``lmforge: error: <message>`` for any :class:`LmforgeError` and exits with
code 2, without a traceback. Library callers catch them like any other exception.
"""

import re


class LmforgeError(Exception):
    """A problem with the user's input or environment, explained in one line."""


class CorpusError(LmforgeError):
    """A corpus cannot be found, downloaded, verified or read."""


class DownloadError(CorpusError):
    """A named corpus is not on this machine and cannot be downloaded (offline, or
    ``LMFORGE_OFFLINE`` is set)."""


class TokenizerError(LmforgeError):
    """A tokenizer cannot be trained, loaded, or used on some text."""


class ConfigError(LmforgeError):
    """An option or configuration value is invalid."""


class RunError(LmforgeError):
    """A run directory is missing, incomplete, or of an unknown format."""


class TrainingError(LmforgeError):
    """Training cannot continue (for example the loss became NaN)."""


def readable_bytes(size: int) -> str:
    """Decimal units with one decimal: ``readable_bytes(26_441_973_824) == '26.4 GB'``,
    ``readable_bytes(3_744) == '3.7 kB'``."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"


def out_of_memory(exc: BaseException) -> str | None:
    """The one-line message for an allocator failure (torch's CPU or CUDA allocator, or
    Python's MemoryError), None for any other exception.

    >>> out_of_memory(RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. "
    ...     "DefaultCPUAllocator: can't allocate memory: you tried to allocate 4361814016 bytes."))
    'out of memory (an allocation of 4.4 GB failed): lower --batch-size or --block-size, ...'
    """
    text = str(exc)
    cpu = isinstance(exc, RuntimeError) and "can't allocate memory" in text
    accelerator = type(exc).__name__ == "OutOfMemoryError" or "out of memory" in text.lower()
    if not (isinstance(exc, MemoryError) or cpu or (isinstance(exc, RuntimeError) and accelerator)):
        return None
    size = ""
    match = re.search(r"allocate (\d+) bytes", text)
    if match:
        size = f" (an allocation of {readable_bytes(int(match.group(1)))} failed)"
    else:
        match = re.search(r"allocate (\d+(?:\.\d+)? [KMGT]iB)", text)
        if match:
            size = f" (an allocation of {match.group(1)} failed)"
    return (
        f"out of memory{size}: lower --batch-size or --block-size, use a smaller model or "
        "vocabulary, or free memory held by other programs (checkpoints already saved are kept)"
    )
