import dataclasses
import hashlib
import http.server
import re
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import pytest

from lmforge.cli import main
from lmforge.data import corpora
from lmforge.data.corpora import RegisteredCorpus, RemoteFile, resolve_corpus
from lmforge.errors import CorpusError, DownloadError

TEXT = "To be, or not to be\n"


@pytest.fixture
def served(tmp_path):
    """A local HTTP server (stands in for the canonical address)."""
    root = tmp_path / "www"
    root.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def register(monkeypatch, url: str, sha256: str) -> None:
    entry = RegisteredCorpus(
        "toy",
        "a toy corpus",
        "public domain",
        {"train": RemoteFile("toy.txt", url, sha256, len(TEXT))},
    )
    monkeypatch.setitem(corpora.REGISTRY, "toy", entry)


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def test_plain_file_and_directory_corpora(tmp_path):
    (tmp_path / "a.txt").write_text("first")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.txt").write_text("second\n")
    corpus = resolve_corpus(tmp_path / "a.txt")
    assert corpus.read() == "first"
    directory = resolve_corpus(tmp_path)
    assert directory.read() == "first\nsecond\n"
    assert list(directory.splits) == ["train"]


def test_directory_with_split_files(tmp_path):
    for name in ("train.txt", "valid.txt", "test.txt"):
        (tmp_path / name).write_text(name)
    corpus = resolve_corpus(tmp_path)
    assert {k: corpus.read(k) for k in corpus.splits} == {
        "train": "train.txt",
        "val": "valid.txt",
        "test": "test.txt",
    }


def test_named_corpus_found_in_data_dir_without_network(tmp_path, monkeypatch):
    (tmp_path / "toy").mkdir()
    (tmp_path / "toy" / "toy.txt").write_text(TEXT)
    register(monkeypatch, "http://127.0.0.1:9/unreachable", sha(TEXT))
    monkeypatch.setenv("LMFORGE_OFFLINE", "1")
    assert resolve_corpus("toy", tmp_path).read() == TEXT


def test_download_verifies_and_caches(served, monkeypatch):
    root, base = served
    (root / "toy.txt").write_text(TEXT)
    register(monkeypatch, f"{base}/toy.txt", sha(TEXT))
    path = resolve_corpus("toy").splits["train"][0]
    assert path == corpora.corpora_cache_dir() / "toy" / "toy.txt"
    assert path.read_text() == TEXT
    (root / "toy.txt").unlink()  # the cached copy is used from now on
    assert resolve_corpus("toy").read() == TEXT


def test_checksum_mismatch_keeps_nothing(served, monkeypatch):
    root, base = served
    (root / "toy.txt").write_text("tampered\n")
    register(monkeypatch, f"{base}/toy.txt", sha(TEXT))
    with pytest.raises(CorpusError, match="checksum mismatch"):
        resolve_corpus("toy")
    assert not (corpora.corpora_cache_dir() / "toy" / "toy.txt").exists()


def test_local_copy_with_wrong_checksum_is_reported(tmp_path, monkeypatch):
    (tmp_path / "toy").mkdir()
    (tmp_path / "toy" / "toy.txt").write_text("edited\n")
    register(monkeypatch, "http://127.0.0.1:9/x", sha(TEXT))
    with pytest.raises(CorpusError, match=r"checksum mismatch.*delete it"):
        resolve_corpus("toy", tmp_path)


def test_offline_error_says_where_to_put_the_file(monkeypatch, tmp_path):
    register(monkeypatch, "http://127.0.0.1:9/toy.txt", sha(TEXT))
    with pytest.raises(CorpusError, match=r"cannot download toy/toy.txt.*put the file at"):
        resolve_corpus("toy", tmp_path)


CASES = {
    "missing": ("missing.txt", None, "not found"),
    "not_utf8": ("latin1.txt", b"caf\xe9 au lait", r"not UTF-8 text: byte 0xe9 at byte offset 3"),
    "empty": ("empty.txt", b"", "is empty"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_corpus_files_give_one_line_and_exit_2(case, tmp_path, capsys):
    name, content, message = CASES[case]
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    code = main(["train", "--corpus", str(path), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("lmforge: error: ") and err.count("\n") == 1
    assert re.search(message, err), err
    assert not (tmp_path / "run").exists()


def test_offline_and_checksum_errors_exit_2(monkeypatch, served, tmp_path, capsys):
    root, base = served
    (root / "toy.txt").write_text("tampered\n")
    register(monkeypatch, f"{base}/toy.txt", sha(TEXT))
    assert main(["train", "--corpus", "toy", "--out", str(tmp_path / "r")]) == 2
    assert "checksum mismatch" in capsys.readouterr().err
    monkeypatch.setenv("LMFORGE_OFFLINE", "1")
    assert main(["train", "--corpus", "toy", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "LMFORGE_OFFLINE" in err and "put the file at" in err


def test_cli_error_has_no_traceback(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"\xff\xfe")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "lmforge",
            "train",
            "--corpus",
            str(bad),
            "--out",
            str(tmp_path / "r"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"lmforge: error: {bad} is not UTF-8 text: byte 0xff at byte offset 0 (invalid start "
        f"byte); convert it first, e.g. iconv -f latin1 -t utf-8 {bad} > fixed.txt"
    ]


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No data directory, LMFORGE_OFFLINE set, and any download attempt fails the test."""
    monkeypatch.setenv("LMFORGE_DATA_DIR", str(tmp_path / "empty-data-dir"))
    monkeypatch.setenv("LMFORGE_OFFLINE", "1")

    def no_network(*args, **kwargs):
        raise AssertionError("tried to download")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)


def test_tinyshakespeare_ships_with_the_package(offline):
    """The demo's corpus resolves with no data directory and no network."""
    try:
        path = resolve_corpus("tinyshakespeare").splits["train"][0]
    except DownloadError as exc:  # not a skip (see conftest): this test is about being offline
        pytest.fail(str(exc))
    assert path == corpora.corpora_cache_dir() / "tinyshakespeare" / "input.txt"
    assert corpora.file_sha256(path) == corpora.REGISTRY["tinyshakespeare"].files["train"].sha256
    text = resolve_corpus("tinyshakespeare").read()
    assert text.startswith("First Citizen:\n") and text.count("\n") == 40_000
    assert len(set(text)) == 65


def test_a_damaged_bundled_copy_is_refused(offline, monkeypatch):
    remote = corpora.REGISTRY["tinyshakespeare"].files["train"]
    entry = RegisteredCorpus(
        "shakespeare-edited", "", "", {"train": dataclasses.replace(remote, sha256="0" * 64)}
    )
    monkeypatch.setitem(corpora.REGISTRY, "shakespeare-edited", entry)
    with pytest.raises(CorpusError, match=r"inside lmforge has sha256 86c4e6.*; reinstall"):
        resolve_corpus("shakespeare-edited")
    assert not (corpora.corpora_cache_dir() / "shakespeare-edited").exists()


def test_the_bundled_copy_is_package_data_with_its_license():
    data = Path(corpora.__file__).parent
    assert (data / "tinyshakespeare.txt.xz").is_file()
    notice = (data / "TINYSHAKESPEARE-NOTICE.txt").read_text()
    assert (
        "public domain" in notice
        and corpora.REGISTRY["tinyshakespeare"].files["train"].sha256 in notice
    )
    pyproject = (Path(__file__).resolve().parents[2] / "pyproject.toml").read_text()
    assert '"data/tinyshakespeare.txt.xz"' in pyproject
    assert '"data/TINYSHAKESPEARE-NOTICE.txt"' in pyproject


def test_offline_without_a_copy_is_a_download_error(offline):
    with pytest.raises(DownloadError, match=r"names/names.txt is not available locally"):
        resolve_corpus("names")


def test_unknown_name_is_an_error():
    with pytest.raises(CorpusError, match="not a file or directory, nor a named corpus"):
        resolve_corpus("no-such-corpus")


def test_registry_matches_shared_sources():
    """The registered checksums are those of ../shared/data/SOURCES.md."""
    sources = Path(__file__).resolve().parents[3] / "shared" / "data" / "SOURCES.md"
    if not sources.is_file():
        pytest.skip("no ../shared/data/SOURCES.md beside the repository")
    text = sources.read_text()
    for entry in corpora.REGISTRY.values():
        for remote in entry.files.values():
            assert remote.sha256 in text, (entry.name, remote.filename)
