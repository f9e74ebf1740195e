"""Bad requests get OpenAI's error body with the right status, and never hurt the server: each
is followed by a valid request that must still succeed (a real server on a loopback socket)."""

from __future__ import annotations

import socket

import httpx
import pytest

from tests.serving.conftest import LSTM, TRANSFORMER

KEY = "sk-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
JSON = {"Content-Type": "application/json", **AUTH}


def completion(**fields):
    return {"model": TRANSFORMER, "prompt": "to be", "max_tokens": 2, **fields}


# (what is wrong, body bytes, status, param, code)
CATALOGUE = [
    ("malformed JSON", b'{"model": "tiny-gpt", "prompt": ', 400, None, "invalid_json"),
    ("not an object", b'["tiny-gpt"]', 400, None, "invalid_type"),
    ("NaN", b'{"model": "tiny-gpt", "prompt": "a", "temperature": NaN}', 400, None, "invalid_json"),
    (
        "non-UTF-8 bytes",
        b'{"model": "tiny-gpt", "prompt": "\xff\xfe"}',
        400,
        None,
        "invalid_encoding",
    ),
    (
        "a lone surrogate",
        b'{"model": "tiny-gpt", "prompt": "\\ud800", "echo": true}',
        400,
        None,
        "invalid_encoding",
    ),
    ("missing prompt", {"model": TRANSFORMER}, 400, "prompt", "invalid_value"),
    ("missing model", {"prompt": "a"}, 400, "model", "invalid_value"),
    ("prompt of a wrong type", completion(prompt=3), 400, "prompt", "invalid_value"),
    ("a list with a number", completion(prompt=["a", 3]), 400, "prompt.1", "invalid_value"),
    ("empty prompt list", completion(prompt=[]), 400, "prompt", "invalid_value"),
    ("max_tokens as text", completion(max_tokens="16"), 400, "max_tokens", "invalid_value"),
    ("negative max_tokens", completion(max_tokens=-1), 400, "max_tokens", "invalid_value"),
    ("temperature as bool", completion(temperature=True), 400, "temperature", "invalid_value"),
    ("temperature above 2", completion(temperature=2.5), 400, "temperature", "invalid_value"),
    ("top_p of 0", completion(top_p=0), 400, "top_p", "invalid_value"),
    ("top_p above 1", completion(top_p=1.5), 400, "top_p", "invalid_value"),
    ("negative top_k", completion(top_k=-5), 400, "top_k", "invalid_value"),
    (
        "repetition_penalty 0",
        completion(repetition_penalty=0),
        400,
        "repetition_penalty",
        "invalid_value",
    ),
    ("logprobs above 20", completion(logprobs=21), 400, "logprobs", "invalid_value"),
    ("n of 0", completion(n=0), 400, "n", "invalid_value"),
    ("n above 16", completion(n=17), 400, "n", "invalid_value"),
    ("five stop strings", completion(stop=list("abcde")), 400, "stop", "invalid_value"),
    ("an empty stop string", completion(stop=""), 400, "stop", "invalid_value"),
    ("negative seed", completion(seed=-1), 400, "seed", "invalid_value"),
    ("stream as text", completion(stream="yes"), 400, "stream", "invalid_value"),
    ("logit_bias", completion(logit_bias={"1": 5}), 400, "logit_bias", "invalid_value"),
    ("unknown model", completion(model="gpt-5"), 404, "model", "model_not_found"),
    (
        "max_tokens above the limit",
        completion(max_tokens=5000),
        400,
        "max_tokens",
        "context_length_exceeded",
    ),
    (
        "prompt longer than the block size",
        completion(prompt="to be " * 10),
        400,
        "prompt",
        "context_length_exceeded",
    ),
    ("a character the tokenizer lacks", completion(prompt="zebra"), 400, "prompt", "invalid_value"),
    (
        "more sequences than the queue",
        completion(prompt=["a"] * 10, n=16),
        400,
        "n",
        "invalid_value",
    ),
]


@pytest.fixture(scope="module")
def keyed_server(runs):
    from tests.serving.conftest import running_server

    with running_server(runs, api_key=KEY, max_queue=64) as srv:
        yield srv


def assert_error(response, status, param=None, code=None):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"] and "\n" not in error["message"]
    assert error["param"] == param
    if code is not None:
        assert error["code"] == code
    return error


def assert_still_serving(server):
    response = httpx.post(
        f"{server.url}/v1/completions", json=completion(model=LSTM), headers=AUTH, timeout=60
    )
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] == 2


@pytest.mark.parametrize(
    ("problem", "body", "status", "param", "code"), CATALOGUE, ids=[c[0] for c in CATALOGUE]
)
def test_bad_completion_request_is_answered_and_the_server_goes_on(
    keyed_server, problem, body, status, param, code
):
    if isinstance(body, bytes):
        response = httpx.post(f"{keyed_server.url}/v1/completions", content=body, headers=JSON)
    else:
        response = httpx.post(f"{keyed_server.url}/v1/completions", json=body, headers=AUTH)
    error = assert_error(response, status, param, code)
    assert error["type"] == ("not_found_error" if status == 404 else "invalid_request_error")
    assert_still_serving(keyed_server)


def test_other_endpoints_name_the_bad_field(keyed_server):
    url = keyed_server.url
    cases = [
        ("/v1/score", {"model": TRANSFORMER, "prompt": "a", "continuations": []}, "continuations"),
        ("/v1/score", {"model": TRANSFORMER, "prompt": 1, "continuations": ["a"]}, "prompt"),
        ("/tokenize", {"model": TRANSFORMER}, "prompt"),
        ("/detokenize", {"model": TRANSFORMER, "tokens": [1, -2]}, "tokens.1"),
        ("/detokenize", {"model": TRANSFORMER, "tokens": [1, 10_000]}, "tokens.1"),
    ]
    for path, body, param in cases:
        assert_error(httpx.post(f"{url}{path}", json=body, headers=AUTH), 400, param)
    missing = httpx.post(f"{url}/tokenize", json={"model": "nope", "prompt": "a"}, headers=AUTH)
    assert_error(missing, 404, "model", "model_not_found")
    assert_still_serving(keyed_server)


def test_unknown_route_and_method_use_the_error_shape(keyed_server):
    assert_error(httpx.get(f"{keyed_server.url}/v1/nothing", headers=AUTH), 404, code="not_found")
    assert_error(httpx.get(f"{keyed_server.url}/v1/completions", headers=AUTH), 405)
    assert_still_serving(keyed_server)


def test_body_over_the_limit_is_413_announced_or_chunked(keyed_server):
    big = b'{"model": "tiny-gpt", "prompt": "' + b"a" * (1 << 20) + b'"}'
    response = httpx.post(f"{keyed_server.url}/v1/completions", content=big, headers=JSON)
    assert_error(response, 413, code="request_too_large")

    def chunks():  # no Content-Length: the body is sent chunked
        yield big[:1000]
        yield big[1000:]

    response = httpx.post(f"{keyed_server.url}/v1/completions", content=chunks(), headers=JSON)
    assert "content-length" not in response.request.headers
    assert_error(response, 413, code="request_too_large")
    assert_still_serving(keyed_server)


def test_half_a_request_then_a_hang_up_does_not_wedge_the_server(keyed_server):
    host, port = keyed_server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n"
            b"Authorization: Bearer " + KEY.encode() + b'\r\n\r\n{"model": '
        )
    assert_still_serving(keyed_server)


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}, {"Authorization": "Basic x"}],
    ids=["missing", "wrong", "no scheme", "basic"],
)
def test_a_missing_or_wrong_key_is_401_and_health_stays_open(keyed_server, headers):
    for method, path in (("GET", "/v1/models"), ("POST", "/v1/completions"), ("POST", "/tokenize")):
        response = httpx.request(method, f"{keyed_server.url}{path}", headers=headers, json={})
        error = assert_error(response, 401, code="invalid_api_key")
        assert error["type"] == "authentication_error"
    assert httpx.get(f"{keyed_server.url}/health").json() == {"status": "ok"}
    assert httpx.get(f"{keyed_server.url}/v1/models", headers=AUTH).status_code == 200
    assert_still_serving(keyed_server)
