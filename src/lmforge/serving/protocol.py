"""The wire format of ``lmforge serve``: request bodies, their checks, OpenAI-style errors, and
the response objects.

Every rejected request gets OpenAI's error body with the HTTP status that says why:

>>> APIError(404, "no model 'x'", param="model", code="model_not_found").body()["error"]
{'message': "no model 'x'", 'type': 'not_found_error', 'param': 'model', 'code': 'model_not_found'}

Request bodies are read here (size limit first, then UTF-8, then JSON) and checked by pydantic
models in strict mode, so ``"max_tokens": "16"`` or ``"temperature": true`` is a 400 naming the
field rather than a silent conversion.
"""

from __future__ import annotations

import json
import math
import re
import time
import uuid
from collections.abc import Sequence
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

MAX_BODY_BYTES = 1 << 20
MAX_N = 16
MAX_LOGPROBS = 20
MAX_STOPS = 4
MAX_SEED = 2**63 - 1

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "server_error",
}


class APIError(Exception):
    """A request the server refuses, with the HTTP status and OpenAI's error fields."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        type: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type or ERROR_TYPES.get(status, "invalid_request_error")

    def body(self) -> dict[str, Any]:
        """``{"error": {"message", "type", "param", "code"}}``."""
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


# --- reading a body ---------------------------------------------------------------------------


def body_too_large(limit: int) -> APIError:
    return APIError(
        413,
        f"the request body is over the {limit:,}-byte limit; send a shorter prompt",
        code="request_too_large",
    )


def parse_json(body: bytes) -> Any:
    """The JSON value of a request body, or a 400 for bytes that are not UTF-8 JSON.

    >>> parse_json(b'{"prompt": "hi"}')
    {'prompt': 'hi'}
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise APIError(
            400,
            f"the request body is not valid UTF-8 (byte {exc.start}); send UTF-8 JSON",
            code="invalid_encoding",
        ) from None
    try:
        value = json.loads(text, parse_constant=_reject_constant)
    except (json.JSONDecodeError, ValueError) as exc:
        raise APIError(
            400,
            f"the request body is not valid JSON ({exc}); send a JSON object",
            code="invalid_json",
        ) from None
    if "\\u" in text and _SURROGATE.search(json.dumps(value, ensure_ascii=False)):
        raise APIError(
            400,
            "the request body has a lone surrogate escape (\\ud800-\\udfff), which is not "
            "text; send valid Unicode",
            code="invalid_encoding",
        )
    return value


_SURROGATE = re.compile("[\ud800-\udfff]")


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


def validate(model: type[BaseModel], value: Any) -> Any:
    """``value`` checked against a request model; the first problem becomes a 400 naming the
    field."""
    if not isinstance(value, dict):
        raise APIError(400, "the request body must be a JSON object", code="invalid_type")
    try:
        return model.model_validate(value, strict=True)
    except ValidationError as exc:
        raise validation_error(exc.errors()) from None


def validation_error(errors: Sequence[Any]) -> APIError:
    """The 400 for pydantic's (or FastAPI's) list of validation errors: the first field's
    most precise problem, with ``param`` its dotted path (``prompt.1``)."""
    if not errors:
        return APIError(400, "invalid request", code="invalid_value")
    located = [(_param(e.get("loc", ())), e) for e in errors]
    field = located[0][0].split(".")[0]
    param, first = max(
        (item for item in located if item[0].split(".")[0] == field),
        key=lambda item: item[0].count("."),
    )
    message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    shown = f"{param}: {message}" if param else message
    return APIError(400, f"invalid request: {shown}", param=param or None, code="invalid_value")


def _param(loc: Sequence[Any]) -> str:
    """``("body", "prompt", "list[str]", 1)`` → ``"prompt.1"`` (pydantic's union tags and
    FastAPI's "body" dropped)."""
    parts = [str(p) for p in loc if p != "body"]
    return ".".join(p for p in parts if not any(c in p for c in "[]-") and p not in _TYPE_TAGS)


_TYPE_TAGS = {"str", "int", "float", "bool", "list", "dict", "none"}


# --- request models ---------------------------------------------------------------------------

NonNegInt = Annotated[int, Field(ge=0)]
Finite = Annotated[float, Field(allow_inf_nan=False)]


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str


class CompletionRequest(_Request):
    """The body of ``POST /v1/completions`` (OpenAI's fields plus ``top_k`` and
    ``repetition_penalty``). Fields OpenAI has and lmforge does not use are refused only when
    they would change the result (``suffix``, ``logit_bias``, the penalties, ``best_of``)."""

    prompt: str | list[str]
    max_tokens: NonNegInt | None = 16
    temperature: Annotated[Finite, Field(ge=0.0, le=2.0)] | None = 1.0
    top_p: Annotated[Finite, Field(gt=0.0, le=1.0)] | None = 1.0
    top_k: Annotated[int, Field(ge=-1)] | None = None
    repetition_penalty: Annotated[Finite, Field(gt=0.0)] | None = 1.0
    n: Annotated[int, Field(ge=1, le=MAX_N)] | None = 1
    stop: str | list[str] | None = None
    seed: Annotated[int, Field(ge=0, le=MAX_SEED - MAX_N)] | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    logprobs: Annotated[int, Field(ge=0, le=MAX_LOGPROBS)] | None = None
    echo: bool | None = False
    user: str | None = None
    suffix: None = None
    best_of: Literal[1] | None = None
    logit_bias: dict[str, float] | None = None
    presence_penalty: Literal[0] | None = None
    frequency_penalty: Literal[0] | None = None

    @field_validator("prompt")
    @classmethod
    def _prompts_given(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and not value:
            raise ValueError("the prompt list is empty; give at least one prompt")
        return value

    @field_validator("stop")
    @classmethod
    def _stops_usable(cls, value: str | list[str] | None) -> str | list[str] | None:
        stops = [value] if isinstance(value, str) else value or []
        if len(stops) > MAX_STOPS:
            raise ValueError(f"at most {MAX_STOPS} stop strings, got {len(stops)}")
        if any(s == "" for s in stops):
            raise ValueError("a stop string must not be empty")
        return value

    @field_validator("logit_bias")
    @classmethod
    def _no_bias(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        if value:
            raise ValueError("logit_bias is not supported by lmforge; drop it")
        return value

    @property
    def prompts(self) -> list[str]:
        """The prompts as a list."""
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)

    @property
    def stops(self) -> list[str]:
        """The stop strings as a list."""
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


class StreamOptions(BaseModel):
    """``stream_options``: ``include_usage`` adds a last chunk with the usage."""

    model_config = ConfigDict(extra="ignore")

    include_usage: bool | None = False


CompletionRequest.model_rebuild()


class ScoreRequest(_Request):
    """The body of ``POST /v1/score``."""

    prompt: str
    continuations: Annotated[list[str], Field(min_length=1, max_length=256)]
    join: str = " "


class TokenizeRequest(_Request):
    """The body of ``POST /tokenize``."""

    prompt: str


class DetokenizeRequest(_Request):
    """The body of ``POST /detokenize``."""

    tokens: list[NonNegInt]


# --- responses --------------------------------------------------------------------------------


def completion_id() -> str:
    return f"cmpl-{uuid.uuid4().hex}"


def completion_object(
    request_id: str,
    created: int,
    model: str,
    choices: list[dict[str, Any]],
    usage: dict[str, int] | None = None,
) -> dict[str, Any]:
    """OpenAI's ``text_completion`` object (also each streamed chunk)."""
    out: dict[str, Any] = {
        "id": request_id,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": choices,
    }
    if usage is not None:
        out["usage"] = usage
    return out


def choice(
    index: int, text: str, logprobs: dict[str, Any] | None, finish_reason: str | None
) -> dict[str, Any]:
    """One entry of ``choices``."""
    return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    """OpenAI's ``usage`` object."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


class LogprobsBuilder:
    """Collects OpenAI's ``logprobs`` object of one choice: ``tokens`` (each token's text),
    ``token_logprobs`` (None for the first prompt token, which nothing predicts),
    ``top_logprobs`` (a {token text: logprob} dict per token, None where there is no
    prediction) and ``text_offset`` (where each token starts in the choice's text).

    >>> b = LogprobsBuilder(); b.add("a", -0.5, {"a": -0.5}); b.add("b", -2.0, {"a": -0.1})
    >>> b.build()["tokens"], b.build()["text_offset"], b.build(1)["top_logprobs"]
    (['a', 'b'], [0, 1], [{'a': -0.1}])
    """

    def __init__(self, offset: int = 0) -> None:
        self.offset = offset
        self.tokens: list[str] = []
        self.token_logprobs: list[float | None] = []
        self.top_logprobs: list[dict[str, float] | None] = []
        self.text_offset: list[int] = []

    def add(self, text: str, logprob: float | None, top: dict[str, float] | None) -> None:
        """Append one token whose text follows the previous tokens'."""
        self.tokens.append(text)
        self.token_logprobs.append(_finite(logprob))
        self.top_logprobs.append(
            None if top is None else {k: _finite(v) for k, v in top.items()}  # type: ignore[misc]
        )
        self.text_offset.append(self.offset)
        self.offset += len(text)

    def __len__(self) -> int:
        return len(self.tokens)

    def build(self, start: int = 0, end: int | None = None) -> dict[str, Any]:
        """The object for tokens ``start:end``."""
        part = slice(start, end)
        return {
            "tokens": self.tokens[part],
            "token_logprobs": self.token_logprobs[part],
            "top_logprobs": self.top_logprobs[part],
            "text_offset": self.text_offset[part],
        }


def _finite(value: float | None) -> float | None:
    """JSON has no -inf: a token the model gives probability 0 reports the lowest float."""
    if value is None or math.isfinite(value):
        return value
    return -3.4028234663852886e38 if value < 0 else 3.4028234663852886e38


def model_card(model_id: str, created: int, max_model_len: int) -> dict[str, Any]:
    """One entry of ``GET /v1/models``."""
    return {
        "id": model_id,
        "object": "model",
        "created": created,
        "owned_by": "lmforge",
        "max_model_len": max_model_len,
    }


def now() -> int:
    return int(time.time())
