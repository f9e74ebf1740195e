"""The trainer state file and the metrics log, through their public functions (gaps found by
mutation testing: resumption is otherwise only exercised in subprocesses)."""

import pytest
import torch

from lmforge.errors import RunError
from lmforge.training.checkpoint import (
    MetricsLog,
    load_trainer_state,
    read_metrics,
    save_trainer_state,
)


def test_trainer_state_round_trips(tmp_path):
    path = tmp_path / "trainer_state.pt"
    state = {"step": 7, "weights": {"w": torch.arange(3.0)}, "note": "x", "losses": [1.5, 2.0]}
    save_trainer_state(path, state)
    loaded = load_trainer_state(path)
    assert loaded.pop("format") == 1
    assert loaded.keys() == state.keys()
    assert (loaded["step"], loaded["note"], loaded["losses"]) == (7, "x", [1.5, 2.0])
    assert torch.equal(loaded["weights"]["w"], torch.arange(3.0))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "is missing"),
        (b"not a torch file", "is damaged or not a trainer state"),
        ({"step": 1}, "unknown trainer-state format"),
        ({"format": 2, "step": 1}, "unknown trainer-state format"),
        ([1, 2], "unknown trainer-state format"),
    ],
)
def test_a_bad_trainer_state_is_a_run_error(tmp_path, content, message):
    path = tmp_path / "trainer_state.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        torch.save(content, path)
    with pytest.raises(RunError, match=message):
        load_trainer_state(path)


def test_metrics_log_appends_truncates_and_skips_a_torn_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    assert read_metrics(path) == []
    log = MetricsLog(path)
    log.reset()
    assert read_metrics(path) == []
    for step in range(5):
        log.append({"step": step, "train_loss": 1.0 / (step + 1)})
    log.append({"note": "no step"})
    log.truncate_after(2)
    assert [r.get("step") for r in read_metrics(path)] == [0, 1, 2, None]
    with open(path, "a", encoding="utf-8") as fh:
        fh.write('{"step": 3, "train_lo')  # a run killed mid-write
    assert [r.get("step") for r in read_metrics(path)] == [0, 1, 2, None]
    log.truncate_after(0)
    assert read_metrics(path) == [{"step": 0, "train_loss": 1.0}, {"note": "no step"}]


CALLS = []


def _record_call() -> None:
    CALLS.append("unpickled")


class _Payload:
    """Pickles as a call of ``_record_call``: what a malicious file would run."""

    def __reduce__(self):
        return (_record_call, ())


def test_loading_a_state_never_runs_code_from_the_file(tmp_path):
    path = tmp_path / "trainer_state.pt"
    torch.save({"format": 1, "step": 1, "payload": _Payload()}, path)
    with pytest.raises(RunError, match="is damaged or not a trainer state"):
        load_trainer_state(path)
    assert CALLS == []
