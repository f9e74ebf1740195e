"""The official ``openai`` client against ``lmforge serve`` on a real loopback socket."""

from __future__ import annotations

import httpx
import pytest

from lmforge.generation import SampleConfig, generate, score
from tests.serving.conftest import LSTM, TRANSFORMER

openai = pytest.importorskip("openai")

KEY = "sk-lmforge-test"
PROMPT = "to be or"


@pytest.fixture(scope="module")
def keyed_server(runs):
    from tests.serving.conftest import running_server

    with running_server(runs, api_key=KEY) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(keyed_server):
    return openai.OpenAI(base_url=f"{keyed_server.url}/v1", api_key=KEY, max_retries=0)


def library(server, name):
    return server.served[name].model, server.served[name].tokenizer


def test_plain_completion_is_the_greedy_sample(client, keyed_server):
    model, tokenizer = library(keyed_server, TRANSFORMER)
    result = client.completions.create(
        model=TRANSFORMER, prompt=PROMPT, max_tokens=30, temperature=0
    )
    expected = generate(model, tokenizer, PROMPT, SampleConfig(max_new_tokens=30, temperature=0))
    assert result.choices[0].text == expected[0]
    assert result.choices[0].finish_reason == "length"
    assert (result.usage.prompt_tokens, result.usage.completion_tokens) == (8, 30)
    assert [m.id for m in client.models.list()] == [TRANSFORMER, LSTM]


def test_streamed_chunks_join_to_the_plain_completion(client):
    plain = client.completions.create(model=LSTM, prompt=PROMPT, max_tokens=30, temperature=0)
    chunks = list(
        client.completions.create(
            model=LSTM,
            prompt=PROMPT,
            max_tokens=30,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    texts = [c.choices[0].text for c in chunks if c.choices]
    assert len(texts) > 1
    assert "".join(texts) == plain.choices[0].text
    assert chunks[-1].usage.completion_tokens == 30
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"


def test_echo_with_logprobs_scores_the_prompt(client, keyed_server):
    model, tokenizer = library(keyed_server, LSTM)
    result = client.completions.create(
        model=LSTM, prompt=PROMPT, max_tokens=4, temperature=0, echo=True, logprobs=2
    )
    choice = result.choices[0]
    logprobs = choice.logprobs
    n = len(PROMPT) + 4
    assert choice.text.startswith(PROMPT) and len(choice.text) == n
    assert len(logprobs.tokens) == len(logprobs.token_logprobs) == n
    assert len(logprobs.top_logprobs) == len(logprobs.text_offset) == n
    assert logprobs.token_logprobs[0] is None
    assert all(len(top) == 2 for top in logprobs.top_logprobs[1:])
    [scored] = score(model, tokenizer, PROMPT[0], [choice.text[1:]], join="")
    assert logprobs.token_logprobs[1:] == pytest.approx([lp for _, lp in scored.tokens], abs=1e-4)


def test_seeded_sampling_is_reproducible_and_n_gives_two_choices(client, keyed_server):
    model, tokenizer = library(keyed_server, TRANSFORMER)

    def sample():
        return client.completions.create(
            model=TRANSFORMER, prompt=PROMPT, max_tokens=20, temperature=1.0, seed=11, n=2
        )

    first, again = sample(), sample()
    assert [c.index for c in first.choices] == [0, 1]
    assert [c.text for c in first.choices] == [c.text for c in again.choices]
    assert (
        first.choices[0].text
        == generate(model, tokenizer, PROMPT, SampleConfig(max_new_tokens=20, seed=11))[0]
    )


def test_stop_ends_the_text_with_finish_reason_stop(client):
    plain = client.completions.create(model=LSTM, prompt=PROMPT, max_tokens=30, temperature=0)
    text = plain.choices[0].text
    stop = text[5]
    result = client.completions.create(
        model=LSTM, prompt=PROMPT, max_tokens=30, temperature=0, stop=[stop, "never"]
    )
    assert result.choices[0].text == text[: text.index(stop)]
    assert result.choices[0].finish_reason == "stop"


def test_key_handling(keyed_server):
    for key in ("wrong", KEY + "x"):
        bad = openai.OpenAI(base_url=f"{keyed_server.url}/v1", api_key=key, max_retries=0)
        with pytest.raises(openai.AuthenticationError) as failure:
            bad.completions.create(model=LSTM, prompt="to", max_tokens=1)
        assert failure.value.status_code == 401
        assert failure.value.body["code"] == "invalid_api_key"
    assert httpx.get(f"{keyed_server.url}/health").status_code == 200
    good = openai.OpenAI(base_url=f"{keyed_server.url}/v1", api_key=KEY, max_retries=0)
    assert good.completions.create(model=LSTM, prompt="to", max_tokens=1).usage.total_tokens == 3
