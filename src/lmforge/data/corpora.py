"""Named corpora and plain-text corpora.

A corpus is a set of UTF-8 text files grouped in splits: ``train``, and optionally ``val`` and
``test``. A named corpus (``tinyshakespeare``, ``wikitext-2``, ``names``) is looked up, in order,
in the data directory (``--data-dir`` or ``$LMFORGE_DATA_DIR``, laid out as
``DATA_DIR/<name>/<file>``), then in the cache (``~/.cache/lmforge/corpora/<name>/<file>``),
then in the package (Tiny Shakespeare ships with lmforge, xz-compressed, so the demo runs
offline), and is otherwise downloaded from its canonical address; every copy is checked against
its sha256 and cached. Any path to a text file, or to a directory of ``.txt`` files, is a corpus
too.

>>> corpus = resolve_corpus("tinyshakespeare")
>>> corpus.splits["train"]
(PosixPath('.../tinyshakespeare/input.txt'),)
"""

from __future__ import annotations

import hashlib
import lzma
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from lmforge.errors import CorpusError, DownloadError
from lmforge.fileio import atomic_path, cache_dir

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class RemoteFile:
    """One file of a named corpus: its name on disk, canonical address, sha256 and size, and
    the xz-compressed copy inside the package (``bundled``, a file of ``lmforge.data``) if it
    ships with lmforge."""

    filename: str
    url: str
    sha256: str
    size: int
    bundled: str | None = None


@dataclass(frozen=True)
class RegisteredCorpus:
    """A named corpus: its files by split, and where it comes from."""

    name: str
    description: str
    license: str
    files: dict[str, RemoteFile]


_PYTORCH_WT2 = (
    "https://raw.githubusercontent.com/pytorch/examples/main/word_language_model/data/wikitext-2/"
)

REGISTRY: dict[str, RegisteredCorpus] = {
    "tinyshakespeare": RegisteredCorpus(
        name="tinyshakespeare",
        description="Tiny Shakespeare (char-rnn): 40,000 lines, 65 distinct characters",
        license="Shakespeare's works, public domain; compiled by A. Karpathy",
        files={
            "train": RemoteFile(
                "input.txt",
                "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
                "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
                1115394,
                bundled="tinyshakespeare.txt.xz",  # public domain: see TINYSHAKESPEARE-NOTICE.txt
            )
        },
    ),
    "wikitext-2": RegisteredCorpus(
        name="wikitext-2",
        description="WikiText-2 (v1, tokenized, with <unk>): 2.09M train words, vocabulary 33,278",
        license="Merity et al. 2016 (Salesforce), CC BY-SA 3.0",
        files={
            "train": RemoteFile(
                "train.txt",
                _PYTORCH_WT2 + "train.txt",
                "9e9fa1ad55b1c2c95b08e37dd8e653f638fac2c6de904b79e813611eefbc985f",
                10797148,
            ),
            "val": RemoteFile(
                "valid.txt",
                _PYTORCH_WT2 + "valid.txt",
                "f0737ed31fc1329026e95cb8b98e19c2a182c39c240ab909dc31abf2f8af58e8",
                1121681,
            ),
            "test": RemoteFile(
                "test.txt",
                _PYTORCH_WT2 + "test.txt",
                "d790b833ef8cf03a90db7bf1271b7520b83c45ce07ba3c1a9699df81e239eca0",
                1256449,
            ),
        },
    ),
    "names": RegisteredCorpus(
        name="names",
        description="makemore names: 32,033 US baby names, one per line",
        license="US baby names from ssa.gov, 2018 (US government data)",
        files={
            "train": RemoteFile(
                "names.txt",
                "https://raw.githubusercontent.com/karpathy/makemore/master/names.txt",
                "0a30b5557f192f32ab962680889aac5f6fda0f4cecf40a6d0b5694f58ea8cc4d",
                228145,
            )
        },
    ),
}


@dataclass(frozen=True)
class Corpus:
    """Text files by split. ``train`` is always present; ``val`` and ``test`` when the corpus
    has files of its own for them (otherwise the last 10 % of train serves as ``val``)."""

    name: str
    splits: dict[str, tuple[Path, ...]]

    def read(self, split: str = "train") -> str:
        """The text of one split, files joined in order (each ending with a newline)."""
        if split not in self.splits:
            have = ", ".join(self.splits)
            raise CorpusError(
                f"corpus {self.name!r} has no {split!r} split (it has: {have}); choose one of those"
            )
        parts = [read_text(path) for path in self.splits[split]]
        if len(parts) == 1:
            return parts[0]
        return "".join(p if p.endswith("\n") else p + "\n" for p in parts)

    def fingerprint(self) -> str:
        """A sha256 over the contents of every file and the split layout: equal fingerprints
        mean equal text."""
        digest = hashlib.sha256()
        for split in SPLITS:
            for path in self.splits.get(split, ()):
                digest.update(f"{split}\0{file_sha256(path)}\0".encode())
        return digest.hexdigest()


def data_dir(explicit: str | os.PathLike[str] | None = None) -> Path | None:
    """The local data directory: ``explicit`` if given, else ``$LMFORGE_DATA_DIR``, else None."""
    value = explicit if explicit is not None else os.environ.get("LMFORGE_DATA_DIR")
    return Path(value).expanduser() if value else None


def corpora_cache_dir() -> Path:
    """Where downloaded corpora are kept: ``<cache>/corpora``."""
    return cache_dir() / "corpora"


def resolve_corpus(
    spec: str | os.PathLike[str], data_dir_path: str | os.PathLike[str] | None = None
) -> Corpus:
    """Turn a corpus name or path into a :class:`Corpus`, downloading a named corpus if needed.

    An existing path wins over a name. A directory with ``train.txt`` (and optionally
    ``valid.txt``/``val.txt``, ``test.txt``) gives those splits; any other directory gives all
    its ``.txt`` files, sorted, as ``train``.

    >>> resolve_corpus("notes.txt").splits
    {'train': (PosixPath('notes.txt'),)}
    """
    path = Path(spec).expanduser()
    if path.is_file():
        return Corpus(name=path.stem, splits={"train": (path,)})
    if path.is_dir():
        return _directory_corpus(path)
    name = str(spec)
    if name in REGISTRY:
        return _registered_corpus(REGISTRY[name], data_dir(data_dir_path))
    known = ", ".join(REGISTRY)
    raise CorpusError(
        f"corpus not found: {name!r} is not a file or directory, nor a named corpus "
        f"({known}); check the path or pick one of the names"
    )


def _directory_corpus(path: Path) -> Corpus:
    splits: dict[str, tuple[Path, ...]] = {}
    if (path / "train.txt").is_file():
        splits["train"] = (path / "train.txt",)
        for split, names in (("val", ("valid.txt", "val.txt")), ("test", ("test.txt",))):
            for candidate in names:
                if (path / candidate).is_file():
                    splits[split] = (path / candidate,)
                    break
    else:
        files = tuple(sorted(p for p in path.rglob("*.txt") if p.is_file()))
        if not files:
            raise CorpusError(
                f"no .txt files in directory {path}; put UTF-8 text files ending in .txt there"
            )
        splits["train"] = files
    return Corpus(name=path.name, splits=splits)


def _registered_corpus(entry: RegisteredCorpus, local_dir: Path | None) -> Corpus:
    splits = {
        split: (locate_file(entry.name, remote, local_dir),)
        for split, remote in entry.files.items()
    }
    return Corpus(name=entry.name, splits=splits)


def locate_file(corpus_name: str, remote: RemoteFile, local_dir: Path | None) -> Path:
    """Find one file of a named corpus locally (data dir, then cache), unpack the copy that
    ships in the package into the cache, or download it.

    Every copy is checked against the registered sha256 before it is used.
    """
    candidates = []
    if local_dir is not None:
        candidates.append(local_dir / corpus_name / remote.filename)
    cached = corpora_cache_dir() / corpus_name / remote.filename
    candidates.append(cached)
    for candidate in candidates:
        if candidate.is_file():
            _verify_sha256(candidate, remote, corpus_name)
            return candidate
    if remote.bundled is not None:
        _unpack_bundled(corpus_name, remote, cached)
    else:
        _download(corpus_name, remote, cached, local_dir)
    return cached


def _unpack_bundled(corpus_name: str, remote: RemoteFile, target: Path) -> None:
    """Decompress the package's copy of ``remote`` to ``target``, checking its sha256."""
    from importlib.resources import files

    source = files("lmforge.data") / str(remote.bundled)
    try:
        data = lzma.decompress(source.read_bytes())
    except (OSError, lzma.LZMAError) as exc:
        raise CorpusError(
            f"the copy of {corpus_name}/{remote.filename} inside lmforge ({remote.bundled}) "
            f"cannot be read ({exc}); reinstall lmforge"
        ) from None
    actual = hashlib.sha256(data).hexdigest()
    if actual != remote.sha256:
        raise CorpusError(
            f"the copy of {corpus_name}/{remote.filename} inside lmforge has sha256 {actual}, "
            f"expected {remote.sha256}; reinstall lmforge"
        )
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def _verify_sha256(path: Path, remote: RemoteFile, corpus_name: str) -> None:
    actual = file_sha256(path)
    if actual != remote.sha256:
        raise CorpusError(
            f"checksum mismatch for {path}: sha256 is {actual}, expected {remote.sha256} "
            f"for {corpus_name}/{remote.filename}; delete it so it is downloaded again, "
            "or pass the file's path as the corpus to use it as it is"
        )


def _download(corpus_name: str, remote: RemoteFile, target: Path, local_dir: Path | None) -> None:
    where = f"{local_dir / corpus_name / remote.filename} or " if local_dir else ""
    hint = (
        f"put the file at {where}{target} (or set LMFORGE_DATA_DIR to a directory holding "
        f"{corpus_name}/{remote.filename})"
    )
    if os.environ.get("LMFORGE_OFFLINE", "") not in ("", "0"):
        raise DownloadError(
            f"{corpus_name}/{remote.filename} is not available locally and LMFORGE_OFFLINE is "
            f"set, so it was not downloaded from {remote.url}; {hint}"
        )
    from tqdm import tqdm

    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(remote.url, timeout=30) as response:
            total = int(response.headers.get("Content-Length") or remote.size)
            with (
                atomic_path(target) as tmp,
                open(tmp, "wb") as out,
                tqdm(
                    total=total,
                    unit="B",
                    unit_scale=True,
                    desc=f"downloading {corpus_name}/{remote.filename}",
                    disable=None,
                ) as bar,
            ):
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
                out.flush()
                actual = digest.hexdigest()
                if actual != remote.sha256:
                    raise CorpusError(
                        f"checksum mismatch for {remote.url}: downloaded sha256 is {actual}, "
                        f"expected {remote.sha256}; the download was corrupted or the file "
                        f"changed upstream: try again, or {hint}"
                    )
    except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DownloadError(
            f"cannot download {corpus_name}/{remote.filename} from {remote.url} ({reason}); "
            f"if you are offline, {hint}"
        ) from None


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The sha256 of a file's bytes, as hex.

    >>> file_sha256("empty.txt")
    'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855'
    """
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def open_corpus_file(path: Path) -> BinaryIO:
    """``path`` opened for reading bytes, with one-line errors for a missing, directory or
    unreadable file."""
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise CorpusError(f"corpus file not found: {path}; check the path") from None
    except IsADirectoryError:
        raise CorpusError(f"{path} is a directory; pass it as the corpus itself") from None
    except PermissionError:
        raise CorpusError(f"cannot read {path}: permission denied; check its permissions") from None


def read_text(path: str | os.PathLike[str]) -> str:
    """Read a UTF-8 text file, with one-line errors for a missing, non-UTF-8 or empty file.

    >>> read_text("latin1.txt")
    CorpusError: latin1.txt is not UTF-8 text: byte 0xe9 at byte offset 3 ...
    """
    path = Path(path)
    with open_corpus_file(path) as fh:
        data = fh.read()
    if not data.strip():
        raise CorpusError(f"corpus file {path} is empty; give a file that contains some text")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        bad = data[exc.start : exc.start + 1].hex()
        raise CorpusError(
            f"{path} is not UTF-8 text: byte 0x{bad} at byte offset {exc.start} ({exc.reason}); "
            f"convert it first, e.g. iconv -f latin1 -t utf-8 {path} > fixed.txt"
        ) from None
