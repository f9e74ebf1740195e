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
    assert threads.choose_threads({1: 1.3e-3, 2: 1.25e-3}) == 1  # within the 10 %: noise
    assert threads.choose_threads({1: 1.0, 2: 0.8, 4: 0.75, 8: 0.5}) == 8
    assert threads.choose_threads({1: 1.0, 2: 1.5, 4: 2.0}) == 1


def in_a_thread(fn):
    """fn() on a new thread (torch's thread count is per thread), its result."""
    result = []
    worker = threading.Thread(target=lambda: result.append(fn()))
    worker.start()
    worker.join()
    return result[0]


@pytest.mark.parametrize("kind", ["rotary", "lstm", "bigram", "context-mean"])
def test_fastest_threads_times_every_candidate_and_keeps_the_choice(
    kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    timed = []
    monkeypatch.setattr(threads, "choose_threads", lambda seconds: timed.append(seconds) or 2)
    model = make_model(kind)
    chosen, left = in_a_thread(
        lambda: (threads.fastest_threads(model, [1, 2]), torch.get_num_threads())
    )
    assert chosen == left == 2
    assert set(timed[0]) == {1, 2} and all(s > 0 for s in timed[0].values())


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


def test_auto_times_the_model_on_the_engine_thread_and_logs_the_choice(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    timed_on = []

    def fastest(model, candidates):
        timed_on.append((threading.current_thread().name, candidates))
        return 2

    monkeypatch.setattr(threads, "fastest_threads", fastest)
    monkeypatch.setattr(threads, "machine_cores", lambda: 4)
    with caplog.at_level(logging.INFO, logger="lmforge.serve"):
        calls = run_and_record_threads({"threads_alone": "auto", "name": "m"}, [5])
    assert timed_on == [("lmforge-engine-m", [1, 2, 4])]
    assert {count for _, count in calls} == {2}
    assert "model m: 1 torch thread(s) for batched steps, 2 for one sequence" in caplog.text


def test_a_failed_timing_leaves_the_batched_count_and_the_engine_serves(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(model, candidates):
        raise RuntimeError("no timer")

    monkeypatch.setattr(threads, "fastest_threads", broken)
    calls = run_and_record_threads({"threads_alone": "auto"}, [5])
    assert len(calls) == 5 and {count for _, count in calls} == {1}


def test_threads_alone_must_be_a_count_auto_or_none() -> None:
    with pytest.raises(Exception, match="threads_alone"):
        Engine(make_model("lstm"), threads_alone="fast")
