"""The lean per-token path of serving: a lone Transformer row on the plain cache, tokens read in
batches when the reader falls behind, streamed chunks from a template, logprobs only when
asked, and the base stream decoder's bounded window."""

from __future__ import annotations

import asyncio
import json
import math
import time
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from lmforge.generation import SampleConfig
from lmforge.models import build_model
from lmforge.models.ragged import RaggedKVCache
from lmforge.models.transformer import KVCache
from lmforge.serving.batching import batch_for
from lmforge.serving.completions import Choice, ChunkFormat, Timing
from lmforge.serving.engine import _END, Engine, Request, Sequence, TokenInfo
from lmforge.serving.protocol import CompletionRequest, choice, completion_object
from lmforge.tokenizers import CharTokenizer
from lmforge.tokenizers.base import Tokenizer

TEXT = "abcdefghijklmnopqrstuvwxyz"


def tiny_transformer() -> Any:
    torch.manual_seed(0)
    model = build_model(
        "transformer", vocab_size=len(TEXT), n_layer=2, n_head=2, n_embd=16, block_size=32
    )
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    return model.eval()


@torch.inference_mode()
def test_a_lone_transformer_row_decodes_on_the_plain_cache_and_switches_back() -> None:
    model = tiny_transformer()
    prompts = [torch.tensor([[1, 2, 3]]), torch.tensor([[4, 5, 6, 7, 8, 9]])]
    alone = []  # each prompt's logits for its next token 10, decoded alone
    for prompt in prompts:
        _, state = model(prompt)
        alone.append(model(torch.tensor([[10]]), state)[0][0, -1])
    batch = batch_for(model)
    batch.join(model(prompts[0])[1])
    assert isinstance(batch.cache, KVCache) and batch.size == 1
    batch.join(model(prompts[1])[1])
    assert isinstance(batch.cache, RaggedKVCache) and batch.size == 2
    batch.keep([1])  # the first row leaves: the second decodes on alone, on its own keys
    assert isinstance(batch.cache, KVCache) and batch.cache.length == 6
    torch.testing.assert_close(batch.step(torch.tensor([10]))[0], alone[1], atol=1e-5, rtol=0)
    batch.keep([])
    assert batch.size == 0 and batch.cache is None


def test_a_sequence_hands_over_every_waiting_token_at_once() -> None:
    async def main() -> None:
        seq = Sequence(Request([1], SampleConfig()), engine=None, loop=asyncio.get_running_loop())
        tokens = [TokenInfo(t, -1.0) for t in (3, 4, 5)]
        seq._put(tokens[:1])
        assert await seq.next_tokens() == tokens[:1]
        seq._put(tokens[1:])
        assert await seq.next_tokens() == tokens[1:]  # arrived while nobody read: together
        waiting = asyncio.ensure_future(seq.next_tokens())
        await asyncio.sleep(0)
        assert not waiting.done()  # nothing yet: it waits
        seq._put([tokens[0], _END])
        assert await waiting == tokens[:1]
        assert await seq.next_tokens() == [] and await seq.next_tokens() == []  # ended, stays
        failed = Sequence(
            Request([1], SampleConfig()), engine=None, loop=asyncio.get_running_loop()
        )
        failed._put([tokens[0], RuntimeError("step failed")])
        assert [info async for info in _until_error(failed)] == tokens[:1]

    asyncio.run(main())


async def _until_error(seq: Sequence) -> Any:
    with pytest.raises(RuntimeError, match="step failed"):
        async for info in seq:
            yield info


@pytest.mark.parametrize("text", ["plain", 'quo"te\\', "line\nbreak", "été 漢字 \U0001f600", ""])
def test_a_chunk_from_the_template_is_what_json_dumps_gives(text: str) -> None:
    chunks = ChunkFormat("cmpl-abc", 1234, 'model "x"')
    for index in (0, 3, 0):  # a template per choice index, reused
        expected = completion_object(
            "cmpl-abc", 1234, 'model "x"', [choice(index, text, None, None)]
        )
        assert (
            chunks.choice(index, text, None, None)
            == f"data: {json.dumps(expected, ensure_ascii=False)}\n\n"
        )
    last = chunks.choice(1, text, {"tokens": [text]}, "stop")  # not the template's shape
    assert json.loads(last[6:])["choices"] == [choice(1, text, {"tokens": [text]}, "stop")]


def test_tokens_that_arrive_together_stream_as_one_delta() -> None:
    """A client that keeps up gets a chunk per token; one that fell behind gets what waited in
    one chunk (the stop filter and the token count still see every token)."""
    tokenizer = CharTokenizer.train(TEXT)
    model = tiny_transformer()
    gaps: list[float] = []

    async def main() -> list[str]:
        engine = Engine(model)
        engine.start()
        try:
            served = SimpleNamespace(tokenizer=tokenizer, engine=engine, token_text=None)
            body = CompletionRequest(model="m", prompt="abc", max_tokens=12, temperature=0)
            timing = Timing(time.perf_counter(), lambda s: None, gaps.append)
            config = SampleConfig(max_new_tokens=12, temperature=0.0)
            c = Choice(served, 0, "abc", tokenizer.encode("abc"), config, body, timing)
            while not c.sequence._items or c.sequence._items[-1] is not _END:
                await asyncio.sleep(0.01)  # all 12 tokens wait unread
            return [delta.text async for delta in c.deltas()], c.generated
        finally:
            await asyncio.to_thread(engine.stop, 1.0)

    texts, generated = asyncio.run(main())
    assert texts[0] == "" and len(texts[1]) == 12 and texts[2:] == [""] and generated == 12
    assert gaps == [0.0] * 11  # the first token's wait is timed apart; the rest came with it


def test_tokens_without_logprobs_skip_them_and_draw_the_same() -> None:
    model = tiny_transformer()
    config = SampleConfig(max_new_tokens=8, temperature=1.0, seed=7)

    async def run(logprobs: bool) -> list[TokenInfo]:
        engine = Engine(model)
        engine.start()
        try:
            return [i async for i in engine.submit(Request([1, 2], config, logprobs=logprobs))]
        finally:
            await asyncio.to_thread(engine.stop, 1.0)

    with_logprobs, without = asyncio.run(run(True)), asyncio.run(run(False))
    assert [i.token for i in without] == [i.token for i in with_logprobs]
    assert all(math.isnan(i.logprob) for i in without)
    assert not any(math.isnan(i.logprob) for i in with_logprobs)


class SpaceTokenizer(Tokenizer):
    """Words as tokens, spelt without their space at the start of a text (as SentencePiece
    decodes "▁word"); it records the length of every decode call."""

    kind = "space-test"
    words = ("the", "cat", "sat", "on", "mat")

    def __init__(self) -> None:
        self.calls: list[int] = []

    @property
    def vocab_size(self) -> int:
        return len(self.words)

    def encode(self, text: str) -> list[int]:
        return [self.words.index(w) for w in text.split()]

    def decode(self, ids: Any) -> str:
        ids = list(ids)
        self.calls.append(len(ids))
        return "".join(" " + self.words[i] for i in ids).removeprefix(" ")

    def id_to_token(self, index: int) -> str:
        return self.words[index]

    def _fields(self) -> dict[str, Any]:
        return {}

    @classmethod
    def _from_fields(cls, fields: dict[str, Any]) -> SpaceTokenizer:
        return cls()


def test_the_base_stream_decoder_reads_a_short_window_per_token() -> None:
    tok = SpaceTokenizer()
    ids = [i % 5 for i in range(300)]
    decoder = tok.stream_decoder()
    pieces = [decoder.push(i) for i in ids]
    assert pieces[:3] == ["the", " cat", " sat"]  # the space comes from the context token
    assert "".join(pieces) + decoder.flush() == tok.decode(ids)
    pushing = tok.calls[:-2]  # the last two: flush's whole decode, and the check above
    assert max(pushing) <= 2  # not the whole output each time: O(1) per token


@pytest.mark.parametrize(("cores", "expected"), [(1, 1), (2, 1), (16, 15)])
def test_the_engines_leave_a_core_to_the_event_loop(
    cores: int, expected: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lmforge.serving.server import engine_threads

    monkeypatch.setattr(torch, "get_num_threads", lambda: cores)
    assert engine_threads() == expected


def test_tokens_that_arrive_together_share_the_gap_since_the_last(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from lmforge.serving import completions

    clock = [0.0]
    monkeypatch.setattr(completions.time, "perf_counter", lambda: clock[0])
    tokenizer = CharTokenizer.train(TEXT)
    first, gaps = [], []

    async def main() -> list[str]:
        seq = Sequence(Request([0], SampleConfig()), engine=None, loop=asyncio.get_running_loop())
        engine = SimpleNamespace(submit=lambda request: seq)
        served = SimpleNamespace(tokenizer=tokenizer, engine=engine, token_text=None)
        body = CompletionRequest(model="m", prompt="a", max_tokens=4)
        timing = Timing(0.0, first.append, gaps.append)
        c = Choice(served, 0, "a", [0], SampleConfig(max_new_tokens=4), body, timing)
        deltas = c.deltas()
        async with asyncio.timeout(10):  # a wrong wait fails instead of hanging
            clock[0] = 1.0
            seq._put([TokenInfo(1, -1.0)])
            texts = [(await anext(deltas)).text, (await anext(deltas)).text]  # echo, token
            clock[0] = 1.3
            seq._put([TokenInfo(2, -1.0), TokenInfo(3, -1.0), TokenInfo(4, -1.0)])
            texts.append((await anext(deltas)).text)
        return texts

    assert asyncio.run(main()) == ["", "b", "cde"]
    assert first == [1.0]
    assert gaps == pytest.approx([0.1, 0.1, 0.1])


class RecordingLoop:
    """Stands in for an event loop: records the calls handed to it."""

    def __init__(self) -> None:
        self.calls: list[Any] = []

    def call_soon_threadsafe(self, fn: Any, *args: Any) -> None:
        self.calls.append((fn, args))

    def run_calls(self) -> None:
        calls, self.calls = self.calls, []
        for fn, args in calls:
            fn(*args)


def test_an_event_loop_is_woken_at_most_once_per_interval_for_plain_tokens() -> None:
    engine = Engine(tiny_transformer(), delivery_interval=3600.0)
    loop = RecordingLoop()
    seq = Sequence(Request([1], SampleConfig()), engine=engine, loop=loop)  # type: ignore[arg-type]
    tokens = [TokenInfo(t, -1.0) for t in range(6)]
    engine._deliver({loop: [(seq, [tokens[0]])]})
    assert len(loop.calls) == 1  # the first token goes at once: the time to first token
    loop.run_calls()
    engine._deliver({loop: [(seq, [tokens[1]])]})
    engine._deliver({loop: [(seq, [tokens[2]])]})
    assert loop.calls == [] and list(seq._items) == tokens[:1]  # held: within the interval
    engine.delivery_interval = 0.0  # the interval has passed
    engine._deliver({loop: [(seq, [tokens[3]])]})
    engine._deliver({loop: [(seq, [tokens[4]])]})
    assert len(loop.calls) == 1  # a loop that was woken and has not read is not woken again
    loop.run_calls()
    assert list(seq._items) == tokens[:5]  # the held ones came with the later step's
    engine.delivery_interval = 3600.0
    engine._deliver({loop: [(seq, [tokens[5], _END])]})
    assert len(loop.calls) == 1  # an end goes at once
    loop.run_calls()
    engine._deliver({loop: [(seq, [tokens[0]])]})
    assert loop.calls == []
    engine._deliver({}, flush=True)  # the engine is about to wait: everything held goes
    loop.run_calls()
    assert list(seq._items) == [*tokens, _END, tokens[0]]
