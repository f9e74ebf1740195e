"""The engine's torch threads: the batched steps' count, and a count of its own for steps with
one sequence (given, or timed at start: lmforge.serving.threads)."""

from __future__ import annotations

import asyncio
import logging
import threading

import pytest
import torch

from lmforge.generation import SampleConfig
from lmforge.serving import threads
from lmforge.serving.engine import Engine, Request
from tests.serving.test_engine import collect, make_model


@pytest.fixture(autouse=True)
def _one_thread():
    """The engines' threads start from this thread's count: 1, as serve's on 2 cores."""
    count = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(count)


def test_candidates_are_powers_of_two_the_cores_and_the_batched_count() -> None:
    assert threads.candidate_threads(1, 1) == [1]
    assert threads.candidate_threads(2, 1) == [1, 2]
    assert threads.candidate_threads(16, 15) == [1, 2, 4, 8, 15, 16]
    assert threads.candidate_threads(6, 5) == [1, 2, 4, 5, 6]


def test_more_threads_are_chosen_only_for_a_clear_gain() -> None:
    assert threads.choose_threads({1: 4.0e-3, 2: 2.2e-3}) == 2
    assert threads.choose_threads({1: 1.3e-3, 2: 1.1e-3}) == 1  # within the 30 %: not worth it
    assert threads.choose_threads({1: 1.0, 2: 0.7, 4: 0.65, 8: 0.5}) == 8
    assert threads.choose_threads({1: 1.0, 2: 0.7, 4: 0.6}) == 2
    assert threads.choose_threads({1: 1.0, 2: 1.5, 4: 2.0}) == 1


def run_trial(trial: threads.ThreadTrial, seconds: dict[int, float]) -> tuple[list[int], int]:
    """Steps timed ``seconds[count]`` until the trial chooses: the counts used, the choice."""
    counts = []
    while True:
        counts.append(trial.count())
        chosen = trial.record(counts[-1], seconds[counts[-1]])
        if chosen is not None:
            return counts, chosen


def test_a_trial_gives_each_count_its_turn_then_keeps_the_fastest() -> None:
    trial = threads.ThreadTrial([2, 1])
    counts, chosen = run_trial(trial, {1: 4e-3, 2: 2.5e-3})
    assert counts[:9] == [1, 1, 1, 1, 2, 2, 2, 2, 1]  # blocks of 4
    assert chosen == trial.chosen == 2 and trial.count() == 2 and trial.trials == 1
    # every step but the first after a switch is timed, until each count has STEPS
    switches = sum(1 for a, b in zip([None, *counts], counts, strict=False) if a != b)
    timed = [len(t) for t in trial.seconds.values()]
    assert sum(timed) == len(counts) - switches and min(timed) == threads.ThreadTrial.STEPS
    assert threads.ThreadTrial([4]).chosen == 4  # nothing to try


def test_a_trial_runs_again_after_retry_steps_and_may_change_its_mind() -> None:
    trial = threads.ThreadTrial([1, 2])
    run_trial(trial, {1: 4e-3, 2: 2.5e-3})
    for _ in range(threads.ThreadTrial.RETRY - 1):
        assert trial.record(2, 2.5e-3) is None and trial.count() == 2
    assert trial.record(2, 2.5e-3) is None and trial.chosen is None  # trying again
    counts, chosen = run_trial(trial, {1: 1e-3, 2: 2.5e-3})
    assert set(counts) == {1, 2} and chosen == 1 and trial.trials == 2


def run_and_record_threads(engine_options: dict, lengths: list[int]) -> list[tuple[int, int]]:
    """Serve one sequence per entry of ``lengths`` (its max_new_tokens), all waiting when
    the engine starts (torch at 1 thread); (batch rows, torch threads) at every model call."""
    model = make_model("lstm")
    calls: list[tuple[int, int]] = []
    hook = model.register_forward_pre_hook(
        lambda m, args: calls.append((args[0].shape[0], torch.get_num_threads()))
    )

    async def run() -> None:
        engine = Engine(model, **engine_options)
        seqs = [engine.submit(Request([1, 2, 3], SampleConfig(max_new_tokens=n))) for n in lengths]
        engine.start()
        try:
            await asyncio.gather(*(collect(s) for s in seqs))
        finally:
            await asyncio.to_thread(engine.stop, 1.0)

    try:
        asyncio.run(run())
    finally:
        hook.remove()
    return calls


def test_one_sequence_steps_on_its_own_thread_count_and_a_batch_on_the_batched() -> None:
    alone = run_and_record_threads({"threads_alone": 2}, [6])
    assert {count for _, count in alone} == {2}
    calls = run_and_record_threads({"threads_alone": 2}, [2, 3, 12])
    assert {count for rows, count in calls if rows > 1} == {1}
    assert calls[-8:] == [(1, 2)] * 8  # the last sequence alone, after the others ended
    unset = run_and_record_threads({}, [2, 12])
    assert {count for _, count in unset} == {1}


def test_auto_tries_the_counts_on_the_first_one_sequence_steps_and_logs_the_choice(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(threads, "machine_cores", lambda: 2)
    monkeypatch.setattr(threads.ThreadTrial, "BLOCK", 2)
    monkeypatch.setattr(threads.ThreadTrial, "STEPS", 2)
    chose_from = []
    monkeypatch.setattr(threads, "choose_threads", lambda s: chose_from.append(s) or 2)
    with caplog.at_level(logging.INFO, logger="lmforge.serve"):
        calls = run_and_record_threads({"threads_alone": "auto", "name": "m"}, [20])
    _read, *decodes = [count for _, count in calls]
    # one-token steps on 1, 1, 2, 2, 1, 1, 2, 2 threads (two timed of each), then the choice
    assert decodes[:8] == [1, 1, 2, 2, 1, 1, 2, 2] and set(decodes[8:]) == {2}
    assert set(chose_from[0]) == {1, 2} and all(s > 0 for s in chose_from[0].values())
    assert "model m: 1 torch thread(s) for batched steps, 2 for one sequence" in caplog.text


def test_a_batch_pauses_the_trial_and_steps_on_the_batched_count(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(threads, "machine_cores", lambda: 2)
    calls = run_and_record_threads({"threads_alone": "auto"}, [3, 4, 5])
    assert {count for rows, count in calls if rows > 1} == {1}


def test_auto_off_a_cpu_steps_one_sequence_on_the_batched_count() -> None:
    engine = Engine(make_model("lstm"), threads_alone="auto")
    engine._device = torch.device("cuda")  # only its type is read: no trial off a CPU
    in_engine_thread = threading.Thread(target=engine._start_threads)
    in_engine_thread.start()
    in_engine_thread.join()
    assert engine.threads == (1, 1) and engine._trial is None


def test_threads_alone_must_be_a_count_auto_or_none() -> None:
    with pytest.raises(Exception, match="threads_alone"):
        Engine(make_model("lstm"), threads_alone="fast")
