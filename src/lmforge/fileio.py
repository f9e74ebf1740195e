"""Atomic file writes and the user's cache directory.

Every file lmforge writes goes to a temporary file in the same directory first and is then
renamed over the target, so a crash or SIGKILL at any moment leaves either the old file or the
new one, never a torn mix.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()

# Called as hook(temporary, target) once a write is complete and before it is renamed over its
# target. Empty in normal use; fault-injection tests (lmforge.training.faults) add to it.
before_rename: list[Callable[[Path, Path], None]] = []


def cache_dir() -> Path:
    """The root of lmforge's cache: ``$LMFORGE_CACHE_DIR``, else ``$XDG_CACHE_HOME/lmforge``,
    else ``~/.cache/lmforge``.

    >>> os.environ["LMFORGE_CACHE_DIR"] = "/tmp/lmf"; str(cache_dir())
    '/tmp/lmf'
    """
    explicit = os.environ.get("LMFORGE_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "lmforge"


@contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success fsync it and rename it over
    ``target``. On an exception the temporary file is removed and ``target`` is untouched.

    >>> with atomic_path("out.bin") as tmp:
    ...     tmp.write_bytes(b"data")  # out.bin appears only when the block ends
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(
        prefix=temporary_prefix(target), suffix=".tmp", dir=target.parent
    )
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual mode
    try:
        yield tmp
        for hook in before_rename:
            hook(tmp, target)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def temporary_prefix(target: str | os.PathLike[str]) -> str:
    """How the names of :func:`atomic_path`'s temporary files for ``target`` begin (they end
    in ``.tmp``), so a writer can find its own leftovers after a crash.

    >>> temporary_prefix("run/model.safetensors")
    '.model.safetensors.'
    """
    return f".{Path(target).name}."


def _fsync_dir(directory: Path) -> None:
    """Make a rename durable (no-op where directories cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(target: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``target`` atomically."""
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(target: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``target`` atomically."""
    atomic_write_bytes(target, text.encode("utf-8"))


def atomic_write_json(target: str | os.PathLike[str], obj: Any, indent: int | None = 2) -> None:
    """Write ``obj`` as JSON (UTF-8, keys in insertion order) to ``target`` atomically."""
    atomic_write_text(target, json.dumps(obj, indent=indent, ensure_ascii=False) + "\n")


def atomic_copy(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
    """Copy ``source`` to ``target`` atomically (temporary file, fsync, rename)."""
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)


def atomic_write_with(target: str | os.PathLike[str], write: Callable[[Path], Any]) -> None:
    """Call ``write(tmp_path)`` and move the result over ``target`` atomically; for writers
    such as ``safetensors`` or ``torch.save`` that want a path of their own."""
    with atomic_path(target) as tmp:
        write(tmp)


@contextmanager
def file_lock(path: str | os.PathLike[str]) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if missing) for the block: processes that
    prepare the same thing (torchrun ranks, parallel runs) do it one at a time."""
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
