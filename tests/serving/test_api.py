"""The HTTP API of ``lmforge serve`` against real servers on loopback sockets: the numbers
match the library's (generate, score), streaming, stops, metrics, disconnects, the command."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from lmforge.generation import SampleConfig, generate, score
from tests.serving.conftest import LSTM, TRANSFORMER, sse_events

PROMPT = "to be or"


def completion(server, **body):
    response = httpx.post(f"{server.url}/v1/completions", json=body, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


def library(server, name):
    served = server.served[name]
    return served.model, served.tokenizer


@pytest.mark.parametrize("name", [TRANSFORMER, LSTM])
def test_greedy_and_seeded_completions_are_what_lmforge_sample_gives(server, name):
    model, tokenizer = library(server, name)
    greedy = completion(server, model=name, prompt=PROMPT, max_tokens=40, temperature=0)
    expected = generate(model, tokenizer, PROMPT, SampleConfig(max_new_tokens=40, temperature=0))
    assert greedy["choices"][0]["text"] == expected[0]
    assert greedy["choices"][0]["finish_reason"] == "length"
    assert greedy["usage"] == {"prompt_tokens": 8, "completion_tokens": 40, "total_tokens": 48}
    assert greedy["object"] == "text_completion" and greedy["model"] == name

    seeded = completion(server, model=name, prompt=PROMPT, max_tokens=20, seed=7, n=2)
    texts = [c["text"] for c in seeded["choices"]]
    assert texts == [
        generate(model, tokenizer, PROMPT, SampleConfig(max_new_tokens=20, seed=seed))[0]
        for seed in (7, 8)
    ]


def test_choice_index_is_prompt_index_times_n_plus_i(server):
    body = completion(server, model=TRANSFORMER, prompt=["the", "to be"], n=2, max_tokens=3)
    assert [c["index"] for c in body["choices"]] == [0, 1, 2, 3]
    # Prompt tokens are counted once per prompt, generated ones once per choice.
    assert body["usage"]["prompt_tokens"] == 3 + 5
    assert body["usage"]["completion_tokens"] == 4 * 3


def test_echo_logprobs_score_the_prompt_as_generation_score_does(server):
    model, tokenizer = library(server, TRANSFORMER)
    prompt = "to be or not"
    body = completion(server, model=TRANSFORMER, prompt=prompt, max_tokens=0, echo=True, logprobs=3)
    choice = body["choices"][0]
    assert choice["text"] == prompt
    logprobs = choice["logprobs"]
    assert logprobs["tokens"] == list(prompt)
    assert logprobs["text_offset"] == list(range(len(prompt)))
    assert logprobs["token_logprobs"][0] is None and logprobs["top_logprobs"][0] is None
    [scored] = score(model, tokenizer, prompt[0], [prompt[1:]], join="")
    assert logprobs["token_logprobs"][1:] == pytest.approx(
        [lp for _, lp in scored.tokens], abs=1e-4
    )
    for top in logprobs["top_logprobs"][1:]:
        assert len(top) == 3 and sorted(top.values(), reverse=True) == list(top.values())
    assert body["usage"]["completion_tokens"] == 0


def test_generated_logprobs_are_the_chosen_tokens_and_the_top_k(server):
    model, tokenizer = library(server, LSTM)
    body = completion(
        server, model=LSTM, prompt=PROMPT, max_tokens=6, temperature=0, logprobs=2, echo=True
    )
    logprobs = body["choices"][0]["logprobs"]
    text = body["choices"][0]["text"]
    assert "".join(logprobs["tokens"]) == text
    assert logprobs["text_offset"] == list(range(len(text)))
    for token, lp, top in zip(
        logprobs["tokens"][8:],
        logprobs["token_logprobs"][8:],
        logprobs["top_logprobs"][8:],
        strict=True,
    ):
        # Greedy: the chosen token is the most likely one.
        assert max(top.values()) == pytest.approx(lp) and top[token] == pytest.approx(lp)
    [scored] = score(model, tokenizer, PROMPT, [text[len(PROMPT) :]], join="")
    assert logprobs["token_logprobs"][8:] == pytest.approx(
        [lp for _, lp in scored.tokens], abs=1e-4
    )


def test_stop_string_ends_the_text_before_it(server):
    plain = completion(server, model=TRANSFORMER, prompt=PROMPT, max_tokens=30, temperature=0)
    text = plain["choices"][0]["text"]
    stop = text[10:12]
    cut = text.index(stop)
    body = completion(
        server, model=TRANSFORMER, prompt=PROMPT, max_tokens=30, temperature=0, stop=[stop]
    )
    assert body["choices"][0]["text"] == text[:cut]
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"]["completion_tokens"] < 30


def test_stream_chunks_join_to_the_completion_and_end_with_usage_and_done(server):
    plain = completion(server, model=LSTM, prompt=PROMPT, max_tokens=25, temperature=0)
    request = {
        "model": LSTM,
        "prompt": PROMPT,
        "max_tokens": 25,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    with httpx.stream("POST", f"{server.url}/v1/completions", json=request, timeout=60) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = list(sse_events(r.iter_lines()))
    assert events[-1] == "[DONE]"
    *chunks, usage_chunk = events[:-1]
    assert usage_chunk["choices"] == [] and usage_chunk["usage"] == plain["usage"]
    assert all(c["object"] == "text_completion" for c in chunks)
    assert "".join(c["choices"][0]["text"] for c in chunks) == plain["choices"][0]["text"]
    assert [c["choices"][0]["finish_reason"] for c in chunks][-1] == "length"
    assert len(chunks) > 1


def test_score_endpoint_prints_what_lmforge_score_json_prints(server):
    model, tokenizer = library(server, TRANSFORMER)
    prompt, continuations = "it is great to hear that", ["you have succeeded", "the bad"]
    response = httpx.post(
        f"{server.url}/v1/score",
        json={"model": TRANSFORMER, "prompt": prompt, "continuations": continuations},
    )
    assert response.status_code == 200
    expected = [r.to_dict() for r in score(model, tokenizer, prompt, continuations)]
    assert response.json() == {
        "object": "score",
        "model": TRANSFORMER,
        "prompt": prompt,
        "continuations": expected,
    }


def test_tokenize_detokenize_and_models(server):
    _, tokenizer = library(server, TRANSFORMER)
    tokens = httpx.post(f"{server.url}/tokenize", json={"model": TRANSFORMER, "prompt": "to be"})
    assert tokens.json() == {
        "tokens": tokenizer.encode("to be"),
        "token_strs": list("to be"),
        "count": 5,
        "max_model_len": 32,
    }
    text = httpx.post(
        f"{server.url}/detokenize", json={"model": TRANSFORMER, "tokens": tokens.json()["tokens"]}
    )
    assert text.json() == {"prompt": "to be"}
    models = httpx.get(f"{server.url}/v1/models").json()
    assert models["object"] == "list"
    assert [(m["id"], m["object"], m["max_model_len"]) for m in models["data"]] == [
        (TRANSFORMER, "model", 32),
        (LSTM, "model", 4096),
    ]


def test_health_and_playground_route(server):
    assert httpx.get(f"{server.url}/health").json() == {"status": "ok"}
    page = httpx.get(f"{server.url}/")
    assert page.status_code == 200 and "lmforge" in page.text


def metric_samples(url):
    text = httpx.get(f"{url}/metrics").text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_metrics_count_requests_tokens_and_latencies(start_server, runs):
    with start_server(runs) as srv:
        for _ in range(2):
            completion(srv, model=LSTM, prompt="to be", max_tokens=4)
        httpx.post(f"{srv.url}/v1/completions", json={"model": "nope", "prompt": "a"})
        samples = metric_samples(srv.url)
    requests = "lmforge_requests_total"
    assert samples[(requests, (("endpoint", "/v1/completions"), ("status", "200")))] == 2
    assert samples[(requests, (("endpoint", "/v1/completions"), ("status", "404")))] == 1
    model = (("model", LSTM),)
    assert samples[("lmforge_prompt_tokens_total", model)] == 2 * 5
    assert samples[("lmforge_generation_tokens_total", model)] == 2 * 4
    assert samples[("lmforge_time_to_first_token_seconds_count", model)] == 2
    assert samples[("lmforge_inter_token_latency_seconds_count", model)] == 2 * 3
    assert samples[("lmforge_active_sequences", model)] == 0
    assert samples[("lmforge_queued_sequences", model)] == 0
    assert samples[("lmforge_engine_steps_total", model)] >= 4
    assert samples[("lmforge_engine_read_tokens_total", model)] == 2 * 5  # no window slides
    for phase in ("read", "decode", "sample"):
        assert samples[("lmforge_engine_seconds_total", (*model, ("phase", phase)))] > 0


def wait_until(condition, seconds=30.0):
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_a_client_that_disconnects_mid_stream_frees_its_slot(start_server, runs):
    with start_server(runs[1:], max_tokens_limit=100_000) as srv:
        engine = srv.engine(LSTM)
        request = {"model": LSTM, "prompt": "to", "max_tokens": 100_000, "stream": True}
        with httpx.stream("POST", f"{srv.url}/v1/completions", json=request, timeout=60) as r:
            lines = r.iter_lines()
            assert next(sse_events(lines))["choices"][0]["text"] is not None
            assert engine.active == 1
        # The connection is closed: the sequence leaves the batch long before its 100,000 tokens.
        assert wait_until(lambda: engine.active == 0)
        steps = engine.steps
        assert steps < 100_000
        time.sleep(0.2)
        assert engine.steps == steps
        # And the server goes on serving.
        assert (
            completion(srv, model=LSTM, prompt="to", max_tokens=2)["usage"]["completion_tokens"]
            == 2
        )


def test_a_client_that_gives_up_on_a_plain_completion_frees_its_slot(start_server, runs):
    with start_server(runs[1:], max_tokens_limit=100_000) as srv:
        engine = srv.engine(LSTM)
        request = {"model": LSTM, "prompt": "to", "max_tokens": 100_000}
        outcome = []

        def give_up_after_a_second():
            try:
                client.post("/v1/completions", json=request, timeout=1)
            except httpx.ReadTimeout as exc:
                outcome.append(exc)

        with httpx.Client(base_url=srv.url) as client:
            sent = threading.Thread(target=give_up_after_a_second)
            sent.start()
            assert wait_until(lambda: engine.active == 1)
            sent.join()  # the client's read timed out and it closed the connection
        assert len(outcome) == 1
        assert wait_until(lambda: engine.active == 0)
        steps = engine.steps
        time.sleep(0.2)
        assert engine.steps == steps < 100_000
        assert completion(srv, model=LSTM, prompt="to", max_tokens=2)["choices"][0]["text"]


def test_queue_full_is_429_and_the_server_recovers(start_server, runs):
    with start_server(runs[1:], max_batch=1, max_queue=2, max_tokens_limit=100_000) as srv:
        engine = srv.engine(LSTM)
        request = {"model": LSTM, "prompt": "to", "max_tokens": 100_000, "stream": True}
        with httpx.Client(base_url=srv.url, timeout=60) as client:
            streams = []
            try:
                for expected in ((1, 0), (1, 1)):  # one decoding, one waiting
                    streams.append(client.stream("POST", "/v1/completions", json=request))
                    streams[-1].__enter__()
                    assert wait_until(lambda e=expected: (engine.active, engine.queued) == e)
                # n=2: the first sequence takes the last place in the queue, the second is
                # refused, and the first is withdrawn with it.
                full = httpx.post(
                    f"{srv.url}/v1/completions", json={**request, "stream": False, "n": 2}
                )
                assert full.status_code == 429
                assert full.json()["error"]["type"] == "rate_limit_error"
                assert full.json()["error"]["code"] == "queue_full"
            finally:
                for s in streams:
                    s.__exit__(None, None, None)
        assert wait_until(lambda: engine.active == 0 and engine.queued == 0)
        steps = engine.steps
        time.sleep(0.2)
        assert (engine.active, engine.queued, engine.steps) == (0, 0, steps)  # nothing left
        assert completion(srv, model=LSTM, prompt="to", max_tokens=2)["choices"][0]["text"]


# --- the command ------------------------------------------------------------------------------


def lmforge(*args, **kwargs):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "lmforge", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        **kwargs,
    )


def test_serve_command_logs_each_request_and_drains_on_sigterm(runs, tmp_path):
    key_file = tmp_path / "key"
    key_file.write_text("sk-from-file\n")
    process = lmforge("serve", *map(str, runs), "--port", "0", "--api-key-file", str(key_file))
    try:
        startup = process.stderr.readline()
        while startup and "http://" not in startup:  # e.g. a warning of a library
            startup = process.stderr.readline()
        assert startup.startswith("lmforge serve: http://127.0.0.1:")
        assert f"(models: {TRANSFORMER}, {LSTM})" in startup
        url = startup.split()[2]
        headers = {"Authorization": "Bearer sk-from-file"}
        assert httpx.get(f"{url}/v1/models", headers=headers).status_code == 200
        # A stream in flight when SIGTERM comes is finished, then the server exits 0.
        request = {"model": LSTM, "prompt": "to", "max_tokens": 150, "stream": True}
        events = []

        def read_stream():
            with httpx.stream(
                "POST", f"{url}/v1/completions", json=request, headers=headers, timeout=60
            ) as r:
                for event in sse_events(r.iter_lines()):
                    events.append(event)

        reader = threading.Thread(target=read_stream)
        reader.start()
        assert wait_until(lambda: len(events) > 0)
        process.send_signal(signal.SIGTERM)
        assert reader.is_alive()  # the stream was still going
        reader.join(60)
        assert process.wait(60) == 0
        log = process.stderr.read()
        assert events[-1] == "[DONE]", log
        assert events[-2]["choices"][0]["finish_reason"] == "length"
        assert "GET /v1/models 200" in log
        assert "POST /v1/completions 200 prompt_tokens=2 generated_tokens=150" in log
        assert "Traceback" not in log
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_serve_command_errors_are_one_line(runs, tmp_path, capsys, monkeypatch):
    from lmforge.cli import main
    from lmforge.serving import server

    def must_not_serve(self, sockets=None):
        raise AssertionError("the server started despite the bad arguments")

    monkeypatch.setattr(server._Server, "run", must_not_serve)

    cases = [
        ([str(tmp_path / "missing")], "run directory not found"),
        ([str(runs[0]), str(runs[0])], "both be served"),
        ([str(runs[0]), "--max-batch", "0"], "--max-batch must be at least 1"),
        ([str(runs[0]), "--threads", "0"], "--threads must be at least 1"),
        ([str(runs[0]), "--api-key", " "], "the API key is empty"),
    ]
    for args, expected in cases:
        assert main(["serve", *args, "--port", "0"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("lmforge: error: ") and expected in err
        assert len(err.strip().splitlines()) == 1
