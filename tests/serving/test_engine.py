"""The continuous-batching engine: a sequence's tokens and logprobs do not depend on its
neighbours, match lmforge's one-sequence generation, and slots are freed and queued as
promised."""

from __future__ import annotations

import asyncio
import math
import random
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import pytest
import torch

from lmforge.errors import LmforgeError
from lmforge.generation import SampleConfig, generate, generate_ids, score
from lmforge.models import build_model, ragged
from lmforge.models.base import LanguageModel
from lmforge.serving.engine import Engine, EngineStopped, QueueFull, Request, TokenInfo
from lmforge.serving.sampling import draw_rows
from lmforge.tokenizers import CharTokenizer

VOCAB = 40
TEXT = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMN"  # VOCAB distinct characters

MODELS = {
    "transformer": dict(n_layer=2, n_head=2, n_embd=32, block_size=24),
    "rotary": dict(n_layer=2, n_head=2, n_embd=32, block_size=24, position="rotary"),
    "llama": dict(
        n_layer=2,
        n_head=4,
        n_kv_head=2,
        n_embd=32,
        block_size=24,
        position="rotary",
        norm="rmsnorm",
        mlp="swiglu",
        bias=False,
        tie_weights=False,
        rope_theta=500000.0,
    ),
    "lstm": dict(n_embd=16, n_hidden=32),
    "gru": dict(n_embd=16, n_hidden=32),
    "rnn": dict(n_embd=16, n_hidden=32),
    "bigram": {},
    "context-mean": dict(mode="mean", n_embd=16, block_size=6),
    "context-sum": dict(mode="sum"),
    "context-mean-unbounded": dict(mode="mean"),
}


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny models run one token at a time: a second intra-op thread only adds hand-offs
    (10x slower on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_model(kind: str, seed: int = 0) -> LanguageModel:
    """A small float32 model with random weights big enough for peaked distributions."""
    torch.manual_seed(seed)
    family = {"rotary": "transformer", "llama": "transformer"}.get(kind, kind.split("-")[0])
    model = build_model(family, vocab_size=VOCAB, **MODELS[kind])
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    return model.eval()


def greedy(max_new_tokens: int) -> SampleConfig:
    return SampleConfig(max_new_tokens=max_new_tokens, temperature=0.0)


@asynccontextmanager
async def running(model: LanguageModel, **options: int) -> AsyncIterator[Engine]:
    """A started engine, always stopped (its thread joined) when the block ends."""
    engine = Engine(model, **options)
    engine.start()
    try:
        yield engine
    finally:
        await asyncio.to_thread(engine.stop, 1.0)


async def collect(seq) -> list[TokenInfo]:
    async with asyncio.timeout(120):  # a wedged engine fails the test instead of hanging it
        return [info async for info in seq]


async def alone(model: LanguageModel, request: Request) -> list[TokenInfo]:
    async with running(model) as engine:
        return await collect(engine.submit(request))


async def in_busy_batch(
    model: LanguageModel, request: Request, others: int = 63
) -> list[TokenInfo]:
    """``request``'s tokens when it runs among ``others`` requests of other prompt lengths,
    lengths and sampling settings, submitted in three waves a few steps apart (it joins with
    the second wave)."""
    rng = random.Random(1)
    neighbours = [
        Request(
            [rng.randrange(VOCAB) for _ in range(rng.randint(1, 30))],
            SampleConfig(
                max_new_tokens=rng.randint(1, 40),
                temperature=rng.choice([0.0, 1.0, 0.7]),
                top_k=rng.choice([None, 5, 20]),  # 20 as the seeded test: sampled in a group
                seed=rng.randrange(1000),
            ),
            top_logprobs=rng.choice([0, 3]),
            prompt_logprobs=rng.random() < 0.2,
        )
        for _ in range(others)
    ]
    third = others // 3
    waves = [neighbours[:third], [request, *neighbours[third : 2 * third]], neighbours[2 * third :]]
    async with running(model, max_batch=others + 1) as engine:
        tasks = []
        for k, wave in enumerate(waves):
            while engine.steps < 3 * k:
                await asyncio.sleep(0.001)
            tasks += [asyncio.create_task(collect(engine.submit(r))) for r in wave]
        results = await asyncio.gather(*tasks)
    return results[third]


def assert_same(batched: list[TokenInfo], single: list[TokenInfo]) -> None:
    assert [t.token for t in batched] == [t.token for t in single]
    for b, s in zip(batched, single, strict=True):
        assert b.logprob == pytest.approx(s.logprob, abs=1e-4)
        assert [t for t, _ in b.top] == [t for t, _ in s.top]
        assert [lp for _, lp in b.top] == pytest.approx([lp for _, lp in s.top], abs=1e-4)


def generate_ids_logprobs(
    model: LanguageModel, prompt: list[int], config: SampleConfig
) -> tuple[list[int], list[float]]:
    """generate_ids's tokens, and the logprob of each under the logits it was drawn from."""
    logits: list[torch.Tensor] = []
    hook = model.register_forward_hook(lambda m, i, out: logits.append(out[0][0, -1].float()))
    try:
        tokens = [int(t) for t in generate_ids(model, prompt, config)]
    finally:
        hook.remove()
    logprobs = [float(torch.log_softmax(row, -1)[t]) for row, t in zip(logits, tokens, strict=True)]
    return tokens, logprobs


@pytest.mark.parametrize("kind", ["transformer", "rotary", "llama", "lstm"])
def test_batched_equals_alone_and_generate_ids(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ragged, "MIN_CAPACITY", 8)  # the caches grow: 8, 16, 24
    model = make_model(kind)
    prompt = [3, 1, 4, 1, 5, 9, 2, 6]
    request = Request(prompt, greedy(40), top_logprobs=3)  # 48 tokens: past the block of 24
    single = asyncio.run(alone(model, request))
    batched = asyncio.run(in_busy_batch(model, request))
    assert_same(batched, single)
    tokens, logprobs = generate_ids_logprobs(model, prompt, greedy(40))
    assert [t.token for t in single] == tokens
    assert [t.logprob for t in single] == pytest.approx(logprobs, abs=1e-4)


@pytest.mark.parametrize(
    "kind", ["gru", "rnn", "bigram", "context-mean", "context-sum", "context-mean-unbounded"]
)
def test_batched_equals_alone_other_families(kind: str) -> None:
    model = make_model(kind)
    prompt = [7, 7, 2]
    request = Request(prompt, greedy(12), top_logprobs=2)
    single = asyncio.run(alone(model, request))
    batched = asyncio.run(in_busy_batch(model, request, others=15))
    assert_same(batched, single)
    assert [t.token for t in single] == [int(t) for t in generate_ids(model, prompt, greedy(12))]


@pytest.mark.parametrize("kind", ["rotary", "llama", "lstm", "gru"])
def test_windows_that_join_together_are_read_in_one_call(kind: str) -> None:
    """Prompts of similar lengths that arrive together are read in one padded model call,
    and each sequence gets what it gets alone (its slid windows too: 35 tokens pass the
    Transformer's block of 24); a prompt too long to pad with them (29 tokens, cropped to 24
    by the Transformer) and one that wants its prompt's logprobs are read alone."""
    model = make_model(kind)
    prompts = [[1, 2, 3, 4, 5], [6, 7, 8, 9, 10, 11], [12, 13, 14, 15, 16], list(range(1, 30))]
    requests = [Request(p, greedy(30)) for p in prompts]
    requests.append(Request([2, 4, 6, 8, 10], greedy(30), prompt_logprobs=True))
    singles = [asyncio.run(alone(model, r)) for r in requests]
    reads: list[tuple[int, int]] = []  # [B, T] of the token embeddings' inputs, T > 1
    (embedding,) = [m for m in model.modules() if isinstance(m, torch.nn.Embedding)]
    hook = embedding.register_forward_pre_hook(
        lambda m, args: reads.append(tuple(args[0].shape)) if args[0].shape[1] > 1 else None
    )

    async def together() -> list[list[TokenInfo]]:
        engine = Engine(model, max_batch=8)
        seqs = [engine.submit(r) for r in requests]  # all waiting when the engine starts
        engine.start()
        try:
            return await asyncio.gather(*(collect(s) for s in seqs))
        finally:
            await asyncio.to_thread(engine.stop, 1.0)

    try:
        batched = asyncio.run(together())
    finally:
        hook.remove()
    for b, s in zip(batched, singles, strict=True):
        assert_same(b, s)
    longest = 29 if kind in ("lstm", "gru") else 24
    assert sorted(reads[:3]) == [(1, 5), (1, longest), (3, 6)]


def test_logprobs_are_the_raw_distribution() -> None:
    """The chosen token's logprob and the alternatives come from log_softmax of the raw
    logits, whatever temperature / top-k the token was drawn with."""
    model = make_model("lstm")
    prompt = [1, 2, 3]
    config = SampleConfig(max_new_tokens=1, temperature=2.5, top_k=3, seed=0)
    (info,) = asyncio.run(alone(model, Request(prompt, config, top_logprobs=5)))
    with torch.no_grad():
        logits = model(torch.tensor([prompt]))[0][0, -1]
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    assert info.logprob == pytest.approx(float(logprobs[info.token]), abs=1e-6)
    expected = torch.topk(logprobs, 5)
    assert [t for t, _ in info.top] == expected.indices.tolist()
    assert [lp for _, lp in info.top] == pytest.approx(expected.values.tolist(), abs=1e-6)


@pytest.mark.parametrize("kind", ["transformer", "lstm"])
def test_seeded_sample_is_its_own_and_matches_generate(kind: str) -> None:
    model = make_model(kind)
    tokenizer = CharTokenizer.train(TEXT)
    assert tokenizer.vocab_size == VOCAB
    config = SampleConfig(max_new_tokens=30, temperature=1.0, top_k=20, seed=1234)
    request = Request(tokenizer.encode("abc"), config)
    single = asyncio.run(alone(model, request))
    batched = asyncio.run(in_busy_batch(model, request))
    assert [t.token for t in batched] == [t.token for t in single]
    expected = generate(model, tokenizer, "abc", SampleConfig(**{**vars(config), "num_samples": 1}))
    assert tokenizer.decode([t.token for t in single]) == expected[0]
    other_seed = SampleConfig(**{**vars(config), "seed": 1235})
    assert asyncio.run(alone(model, Request(request.prompt_ids, other_seed))) != single


def test_transformer_window_slides_as_generate_ids() -> None:
    """A prompt longer than the block is cropped, and generation past the block slides the
    window exactly as generate_ids does, sampled with a repetition penalty too."""
    model = make_model("rotary")
    prompt = [i % VOCAB for i in range(30)]  # block 24: cropped
    for config in (
        greedy(60),
        SampleConfig(max_new_tokens=60, temperature=0.8, repetition_penalty=1.3, seed=5),
    ):
        tokens = [t.token for t in asyncio.run(alone(model, Request(prompt, config)))]
        assert tokens == [int(t) for t in generate_ids(model, prompt, config)]


def test_engine_counts_the_tokens_it_reads_and_its_time_by_phase() -> None:
    """read_tokens: the cropped prompt, then each slid window again (block 24 keeps 18 tokens
    and slides every 7th token: 24 + 9 * 18), as many as generate_ids reads without a state;
    every phase's seconds grow, and together they fit in the run's wall time."""
    model = make_model("rotary")
    prompt = [i % VOCAB for i in range(30)]
    read_by_generate = []
    hook = model.register_forward_pre_hook(
        lambda m, args: read_by_generate.append(args[0].shape[1]) if len(args) == 1 else None
    )
    try:
        list(generate_ids(model, prompt, greedy(60)))
    finally:
        hook.remove()

    async def run() -> tuple[int, dict[str, float], float]:
        started = time.perf_counter()
        async with running(model) as engine:
            assert engine.read_tokens == 0 and set(engine.seconds.values()) == {0.0}
            await collect(engine.submit(Request(prompt, greedy(60))))
            return engine.read_tokens, engine.seconds, time.perf_counter() - started

    read_tokens, seconds, wall = asyncio.run(run())
    assert read_tokens == sum(read_by_generate) == 24 + 9 * 18
    assert set(seconds) == {"read", "decode", "sample"}
    assert all(value > 0 for value in seconds.values())
    assert sum(seconds.values()) < wall


@pytest.mark.parametrize("continuation", ["defgh", "defghijklmnopqrstuvwxyzABCDEFGH"])
def test_echo_prompt_logprobs_equal_score(continuation: str) -> None:
    """Within the block, and past it (each prediction then sees the last 24 tokens)."""
    model = make_model("transformer")
    tokenizer = CharTokenizer.train(TEXT)
    prompt = "abc"

    async def echo() -> tuple:
        async with running(model) as engine:
            ids = tokenizer.encode(prompt + continuation)
            seq = engine.submit(Request(ids, greedy(0), top_logprobs=2, prompt_logprobs=True))
            tokens = await collect(seq)
            return seq, tokens

    seq, tokens = asyncio.run(echo())
    assert tokens == [] and seq.finish_reason == "length"
    (scored,) = score(model, tokenizer, prompt, [continuation], join="")
    assert seq.prompt_logprobs is not None and seq.prompt_logprobs[0] is None
    assert len(seq.prompt_logprobs) == len(prompt + continuation)
    echoed = [info.logprob for info in seq.prompt_logprobs[len(prompt) :]]
    assert echoed == pytest.approx([lp for _, lp in scored.tokens], abs=1e-5)
    assert all(len(info.top) == 2 for info in seq.prompt_logprobs[1:])


def test_cancel_frees_the_slot_before_the_next_step() -> None:
    """Cancelled between steps (the engine held in its step hook) or during a step (from
    inside the model call), a sequence has left the batch when the next step completes."""
    model = make_model("lstm")
    records: list[tuple[int, int]] = []
    paused, resume = threading.Event(), threading.Event()

    async def scenario() -> None:
        async with running(model, max_batch=4) as engine:

            def on_step(active: int, queued: int) -> None:
                records.append((engine.steps, active))
                if engine.steps == 3:
                    paused.set()
                    resume.wait(10)

            engine.on_step = on_step
            seqs = [engine.submit(Request([1, 2], greedy(10_000))) for _ in range(3)]
            await asyncio.to_thread(paused.wait, 10)
            seqs[0].cancel()
            seqs[0].cancel()  # idempotent
            resume.set()
            assert await collect(seqs[0]) != []  # the tokens of steps 1..3, then the end
            assert seqs[0].finish_reason == "cancelled"

            original = engine._batch.step
            cancelled_in: list[int] = []

            def step_and_cancel(tokens: torch.Tensor) -> torch.Tensor:
                if not cancelled_in:
                    cancelled_in.append(engine.steps + 1)
                    seqs[1].cancel()  # arrives while this step runs
                return original(tokens)

            engine._batch.step = step_and_cancel
            await collect(seqs[1])
            seqs[2].cancel()
            await collect(seqs[2])
            by_step = dict(records)
            assert by_step[3] == 3 and by_step[4] == 2
            assert by_step[cancelled_in[0] - 1] == 2 and by_step[cancelled_in[0]] == 1

    asyncio.run(scenario())


def test_queue_waits_above_max_batch_and_is_bounded() -> None:
    model = make_model("lstm")

    async def scenario() -> None:
        async with running(model, max_batch=2, max_queue=3) as engine:
            most = [0]
            engine.on_step = lambda active, queued: most.__setitem__(0, max(most[0], active))
            running_seqs = [engine.submit(Request([1], greedy(10_000))) for _ in range(2)]
            while engine.active < 2:
                await asyncio.sleep(0.001)
            waiting = [engine.submit(Request([2], greedy(3))) for _ in range(3)]
            assert engine.queued == 3
            with pytest.raises(QueueFull, match="already waiting"):
                engine.submit(Request([3], greedy(3)))
            running_seqs[0].cancel()
            running_seqs[1].cancel()
            for seq in waiting:
                assert len(await collect(seq)) == 3
            assert most[0] == 2

    asyncio.run(scenario())


def test_a_failing_step_fails_its_sequences_and_the_engine_goes_on() -> None:
    model = make_model("transformer")

    async def scenario() -> None:
        async with running(model) as engine:
            seqs = [engine.submit(Request([1, 2, 3], greedy(50))) for _ in range(2)]
            await seqs[0].__anext__()

            def broken(tokens: torch.Tensor) -> torch.Tensor:
                raise RuntimeError("device lost")

            engine._batch.step = broken
            for seq in seqs:
                with pytest.raises(LmforgeError, match="device lost"):
                    await collect(seq)
            after = await collect(engine.submit(Request([1, 2, 3], greedy(5))))
            assert [t.token for t in after] == [
                int(t) for t in generate_ids(model, [1, 2, 3], greedy(5))
            ]

    asyncio.run(scenario())


def test_call_runs_on_the_engine_thread_and_stop_ends_everything() -> None:
    model = make_model("bigram")

    async def scenario() -> None:
        engine = Engine(model, name="tiny")
        engine.start()
        try:
            assert (
                await engine.call(lambda: threading.current_thread().name) == "lmforge-engine-tiny"
            )
            with pytest.raises(ZeroDivisionError):
                await engine.call(lambda: 1 / 0)
            endless = engine.submit(Request([1], greedy(10**9)))
            await endless.__anext__()
        finally:
            await asyncio.to_thread(engine.stop, 0.05)
        await collect(endless)
        assert endless.finish_reason == "cancelled"
        with pytest.raises(EngineStopped):
            engine.submit(Request([1], greedy(1)))

    asyncio.run(scenario())


def test_draw_rows_draws_what_multinomial_draws_row_by_row() -> None:
    torch.manual_seed(0)
    for vocab in (2, 65, 1000):
        logits = torch.randn(6, vocab) * 3
        logits[1, : vocab // 2] = -math.inf  # a filtered row: those tokens are never drawn
        logits[4] = math.nan  # multinomial refuses this row
        probs = logits.softmax(dim=-1)
        seeds = [11, 12, 13, 14, 15, 16]
        ours = [torch.Generator().manual_seed(s) for s in seeds]
        tokens, valid = draw_rows(probs, ours)
        assert valid == [True, True, True, True, False, True]
        for i, seed in enumerate(seeds):
            theirs = torch.Generator().manual_seed(seed)
            if i == 4:
                with pytest.raises(RuntimeError):
                    torch.multinomial(probs[i : i + 1], 1, generator=theirs)
            else:
                expected = torch.multinomial(probs[i : i + 1], 1, generator=theirs)
                assert int(tokens[i]) == int(expected)
            assert torch.equal(ours[i].get_state(), theirs.get_state())  # same draws consumed
        assert int(tokens[1]) >= vocab // 2
