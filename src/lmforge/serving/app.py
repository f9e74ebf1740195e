"""The FastAPI app of ``lmforge serve``: endpoints, the API key, the access log and metrics.

>>> app = create_app([ServedModel("shakespeare", run.model, run.tokenizer, Engine(run.model))])

The engines start with the app (its lifespan) and stop, after finishing their sequences for up
to ``Settings.drain_seconds``, when it shuts down. Every error leaves as OpenAI's
``{"error": {...}}`` body (see :mod:`lmforge.serving.protocol`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Sequence
from importlib import resources
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import (
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    Response,
    StreamingResponse,
)
from starlette.exceptions import HTTPException as StarletteHTTPException

from lmforge import generation
from lmforge.errors import LmforgeError
from lmforge.serving import completions
from lmforge.serving.engine import EngineStopped, QueueFull
from lmforge.serving.metrics import CONTENT_TYPE, ServerMetrics
from lmforge.serving.protocol import (
    MAX_BODY_BYTES,
    APIError,
    CompletionRequest,
    DetokenizeRequest,
    ScoreRequest,
    TokenizeRequest,
    body_too_large,
    model_card,
    now,
    parse_json,
    validate,
    validation_error,
)

log = logging.getLogger("lmforge.serve")

T = TypeVar("T")
UNLIMITED_CONTEXT_PROMPT_TOKENS = 4096
CLIENT_CLOSED_REQUEST = 499  # nginx's status for a request whose client went away
PUBLIC_PATHS = ("/health", "/metrics", "/")
ENDPOINTS = (
    "/v1/models",
    "/v1/completions",
    "/v1/score",
    "/tokenize",
    "/detokenize",
    "/health",
    "/metrics",
    "/",
)


@dataclasses.dataclass
class ServedModel:
    """A model served under ``name`` (its run directory's name) by its engine."""

    name: str
    model: Any
    tokenizer: Any
    engine: Any
    created: int = dataclasses.field(default_factory=now)
    max_unlimited_prompt: int = UNLIMITED_CONTEXT_PROMPT_TOKENS

    @property
    def max_prompt_tokens(self) -> int:
        """The longest prompt accepted: the Transformer's block size, else a server limit."""
        return self.model.max_context or self.max_unlimited_prompt

    def token_text(self, token: int) -> str:
        """One token's text on its own (the keys of ``top_logprobs``)."""
        return self.tokenizer.decode([token])


@dataclasses.dataclass
class Settings:
    """Server-wide limits and the API key (None: no key needed)."""

    api_key: str | None = None
    max_tokens_limit: int = 4096
    max_queue: int = 256
    max_body_bytes: int = MAX_BODY_BYTES
    drain_seconds: float = 10.0


def create_app(models: Sequence[ServedModel], settings: Settings | None = None) -> FastAPI:
    """The app serving ``models`` (their names must differ)."""
    settings = settings or Settings()
    served = {m.name: m for m in models}
    metrics = ServerMetrics({name: m.engine for name, m in served.items()})

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        for m in served.values():
            m.engine.start()
        try:
            yield
        finally:
            for m in served.values():
                m.engine.stop(timeout=settings.drain_seconds)

    app = FastAPI(title="lmforge", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.metrics = metrics
    app.state.served = served
    _add_error_handlers(app)

    def model_for(name: str) -> ServedModel:
        if name not in served:
            raise APIError(
                404,
                f"the model '{name}' does not exist; this server has {', '.join(served)}",
                param="model",
                code="model_not_found",
            )
        return served[name]

    async def read(request: Request, kind: type[Any]) -> Any:
        return validate(kind, parse_json(await read_body(request, settings.max_body_bytes)))

    def count(request: Request, prompt: int = 0, generated: int = 0, model: str = "") -> None:
        request.state.prompt_tokens = getattr(request.state, "prompt_tokens", 0) + prompt
        request.state.generated_tokens = getattr(request.state, "generated_tokens", 0) + generated
        if model:
            metrics.prompt_tokens.labels(model).inc(prompt)
            metrics.generation_tokens.labels(model).inc(generated)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metrics")
    async def metrics_text() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/")
    async def playground() -> Response:
        page = resources.files("lmforge.serving").joinpath("playground.html")
        if page.is_file():
            return HTMLResponse(page.read_text(encoding="utf-8"))
        return PlainTextResponse(
            "lmforge serve: the playground page is not installed; the API is under /v1"
        )

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        cards = [model_card(m.name, m.created, m.max_prompt_tokens) for m in served.values()]
        return {"object": "list", "data": cards}

    @app.post("/v1/completions")
    async def create_completion(request: Request) -> Response:
        body: CompletionRequest = await read(request, CompletionRequest)
        model = model_for(body.model)
        labels = model.name
        timing = completions.Timing(
            received_at=time.perf_counter(),
            first_token=metrics.time_to_first_token.labels(labels).observe,
            between_tokens=metrics.inter_token_latency.labels(labels).observe,
        )
        choices = completions.make_choices(model, body, settings, timing)
        prompt_tokens = sum(len(c.ids) for c in choices[:: body.n or 1])
        count(request, prompt=prompt_tokens, model=model.name)
        if body.stream:

            async def events() -> AsyncIterator[str]:
                try:
                    async for event in completions.stream(body, choices, prompt_tokens):
                        yield event
                finally:
                    count(request, generated=sum(c.generated for c in choices), model=model.name)

            return StreamingResponse(
                events(),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        try:
            result = await until_disconnected(
                request, completions.complete(body, choices, prompt_tokens)
            )
        finally:
            count(request, generated=sum(c.generated for c in choices), model=model.name)
        if result is None:  # nobody is listening any more
            return Response(status_code=CLIENT_CLOSED_REQUEST)
        return JSONResponse(result)

    @app.post("/v1/score")
    async def score(request: Request) -> dict[str, Any]:
        body: ScoreRequest = await read(request, ScoreRequest)
        model = model_for(body.model)
        limit = model.max_unlimited_prompt
        longest = max(
            len(generation.prompt_ids(model.tokenizer, body.prompt + body.join + c))
            for c in body.continuations
        )
        if longest > limit:
            raise APIError(
                400,
                f"a prompt and continuation are {longest} tokens, more than this server "
                f"scores ({limit}); shorten them",
                param="continuations",
                code="context_length_exceeded",
            )
        results = await model.engine.call(
            lambda: generation.score(
                model.model, model.tokenizer, body.prompt, body.continuations, join=body.join
            )
        )
        count(request, prompt=sum(len(r.tokens) for r in results))
        return {
            "object": "score",
            "model": model.name,
            "prompt": body.prompt,
            "continuations": [r.to_dict() for r in results],
        }

    @app.post("/tokenize")
    async def tokenize(request: Request) -> dict[str, Any]:
        body: TokenizeRequest = await read(request, TokenizeRequest)
        model = model_for(body.model)
        ids = model.tokenizer.encode(body.prompt)
        count(request, prompt=len(ids))
        return {
            "tokens": ids,
            "token_strs": [model.tokenizer.id_to_token(i) for i in ids],
            "count": len(ids),
            "max_model_len": model.max_prompt_tokens,
        }

    @app.post("/detokenize")
    async def detokenize(request: Request) -> dict[str, Any]:
        body: DetokenizeRequest = await read(request, DetokenizeRequest)
        model = model_for(body.model)
        vocab = model.tokenizer.vocab_size
        for i, token in enumerate(body.tokens):
            if token >= vocab:
                raise APIError(
                    400,
                    f"token {token} is outside the vocabulary of '{model.name}' "
                    f"(ids 0 to {vocab - 1})",
                    param=f"tokens.{i}",
                    code="invalid_value",
                )
        return {"prompt": model.tokenizer.decode(body.tokens)}

    app.add_middleware(AccessLog, metrics=metrics, api_key=settings.api_key)
    return app


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it passes ``limit`` bytes (announced
    or, for a chunked body, as it arrives)."""
    announced = request.headers.get("content-length")
    if announced is not None and announced.isdigit() and int(announced) > limit:
        raise body_too_large(limit)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise body_too_large(limit)
    return bytes(body)


async def until_disconnected(request: Request, work: Awaitable[T]) -> T | None:
    """``work``'s result, or None (and ``work`` cancelled, which cancels its sequences) as soon
    as the client hangs up."""
    task = asyncio.ensure_future(work)
    hang_up = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, hang_up}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        hang_up.cancel()
        if not task.done():
            task.cancel()
    if task.cancelled():
        return None
    return task.result()


async def _disconnected(request: Request) -> None:
    """Returns when the client closes the connection (the body has been read already)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _add_error_handlers(app: FastAPI) -> None:
    def reply(error: APIError) -> JSONResponse:
        return JSONResponse(error.body(), status_code=error.status)

    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError) -> JSONResponse:
        return reply(exc)

    @app.exception_handler(LmforgeError)
    async def bad_input(request: Request, exc: LmforgeError) -> JSONResponse:
        if isinstance(exc, EngineStopped):
            return reply(APIError(503, str(exc), code="server_stopping"))
        if isinstance(exc, QueueFull):
            return reply(APIError(429, str(exc), code="queue_full"))
        return reply(APIError(400, str(exc), code="invalid_value"))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return reply(validation_error(exc.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            message = f"no route {request.method} {request.url.path}; see GET /v1/models"
            return reply(APIError(404, message, code="not_found"))
        return reply(APIError(exc.status_code, str(exc.detail)))

    @app.exception_handler(Exception)
    async def crash(request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error on %s %s", request.method, request.url.path)
        return reply(APIError(500, f"internal server error: {type(exc).__name__}: {exc}"))


class AccessLog:
    """ASGI wrapper around the app: checks the API key, then logs one line per request
    (method, path, status, tokens, ms) and counts it in the metrics once the response has
    been sent (for a stream: when it ends)."""

    def __init__(self, app: Any, metrics: ServerMetrics, api_key: str | None) -> None:
        self.app = app
        self.metrics = metrics
        self.api_key = api_key.encode() if api_key else None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        state = scope.setdefault("state", {})

        async def send_and_note(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            if self._authorized(scope):
                await self.app(scope, receive, send_and_note)
            else:
                error = APIError(
                    401,
                    "a valid API key is needed: send the header 'Authorization: Bearer KEY'",
                    code="invalid_api_key",
                )
                await JSONResponse(error.body(), status_code=401)(scope, receive, send_and_note)
        finally:
            path = scope.get("path", "")
            endpoint = path if path in ENDPOINTS else "other"
            self.metrics.requests.labels(endpoint, str(status)).inc()
            log.info(
                "%s %s %d prompt_tokens=%d generated_tokens=%d %.1f ms",
                scope.get("method", ""),
                path,
                status,
                state.get("prompt_tokens", 0),
                state.get("generated_tokens", 0),
                (time.perf_counter() - started) * 1000,
            )

    def _authorized(self, scope: dict[str, Any]) -> bool:
        if self.api_key is None or scope.get("path") in PUBLIC_PATHS:
            return True
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                scheme, _, key = value.partition(b" ")
                key = key.strip()
                return scheme.lower() == b"bearer" and hmac.compare_digest(key, self.api_key)
        return False
