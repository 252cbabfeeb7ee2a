"""The FastAPI app: OpenAI-compatible routes over one inference engine.

Routes: GET /v1/models, GET /v1/models/{model}, POST /v1/chat/completions and
POST /v1/score/evaluation (reward models, LLaMA-Factory's shape). Every error, from a bad API key
to an unexpected exception, is answered with OpenAI's error body
`{"error": {"message", "type", "param", "code"}}`; pydantic's validation errors become 400
(OpenAI's status), not FastAPI's 422. A full engine answers 429 with `Retry-After` at once, a
stopping one 503; text that is not valid Unicode (a lone surrogate) and a prompt longer than
the model's context (`context_length_exceeded`, with the counts) are 400s.

Any `model` name is accepted, as LLaMA-Factory does (its example clients send their own); the
response names the served model. `strict_model_name` gives OpenAI's 404 for another name.

`serve` runs the app with uvicorn and stops it gracefully: on SIGTERM or SIGINT uvicorn stops
accepting connections, the engine is drained (every answer being generated ends at its next
token with finish reason "length", so each stream gets its final chunk and `[DONE]`), and the
process exits once the connections are closed, within SHUTDOWN_TIMEOUT_SECONDS.

Pure ASGI middlewares run around the routes, outermost first: the API key check (so nothing
about a request is answered without the key), the request body size limit, and the answer to
unexpected errors.
"""

from __future__ import annotations

import hmac
import logging
import socket
import time
import uuid
from collections.abc import Mapping
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tuneforge.errors import UserError
from tuneforge.inference.engine import ContextLengthError, Engine, EngineBusy, EngineStopped
from tuneforge.serving.chat import ChatService, ClientGone, prepare
from tuneforge.serving.protocol import (
    REQUEST_FIELDS,
    ApiError,
    ChatCompletion,
    ChatCompletionRequest,
    ModelCard,
    ModelList,
    ScoreRequest,
    ScoreResponse,
    error_body,
    lone_surrogate,
    unsupported_fields,
)

logger = logging.getLogger(__name__)

DEFAULT_MAX_REQUEST_BYTES = 1 << 20
SHUTDOWN_TIMEOUT_SECONDS = 10
CLIENT_CLOSED_REQUEST = 499  # nginx's status for a client that left: never seen by anyone


def _error_response(error: ApiError, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=headers or error.headers)


class ApiKeyMiddleware:
    """Answers 401 to any request without `Authorization: Bearer <key>`."""

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app = app
        self.expected = f"Bearer {api_key}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(b"authorization")
        if given is not None and hmac.compare_digest(given, self.expected):
            await self.app(scope, receive, send)
            return
        message = (
            "Missing API key: send the header `Authorization: Bearer <API_KEY>`."
            if given is None
            else "Incorrect API key provided."
        )
        error = ApiError(401, message, None, "invalid_api_key")
        response = _error_response(error, {"WWW-Authenticate": "Bearer"})
        await response(scope, receive, send)


class UnexpectedErrorMiddleware:
    """Answers 500 in OpenAI's shape to an unexpected exception, and logs it.

    Starlette's own last-resort handler re-raises after answering, and uvicorn then drops the
    keep-alive connection under the client's next request; this one does not re-raise.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as error:
            logger.error("unexpected error on %s", scope.get("path"), exc_info=error)
            if scope["type"] != "http" or started:
                raise
            body = error_body(f"Internal server error: {error}", "server_error", None, None)
            await JSONResponse(body, status_code=500)(scope, receive, send)


class BodyLimitMiddleware:
    """Answers 413 to a request body over `max_bytes`: at once when Content-Length says so,
    else as soon as the bytes read pass the limit (chunked uploads)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _error(self) -> ApiError:
        return ApiError(
            413,
            f"The request body is larger than this server's limit of {self.max_bytes} bytes "
            "(API_MAX_REQUEST_BYTES).",
            None,
            "request_too_large",
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_bytes:
            await _error_response(self._error())(scope, receive, send)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                # an HTTPException passes through FastAPI's body reading to our handler
                raise HTTPException(413, self._error().message)
            return message

        await self.app(scope, limited_receive, send)


def _param(loc: tuple[Any, ...]) -> str | None:
    """`("body", "messages", 0, "content", "str")` -> `messages[0].content`: field names and
    indices are kept, pydantic's labels of union branches ("str", "list[ContentPart]") dropped."""
    param = ""
    for part in loc[1:]:
        if isinstance(part, int):
            param += f"[{part}]"
        elif part in REQUEST_FIELDS:
            param += f".{part}" if param else part
    return param or None


def _validation_error(error: RequestValidationError) -> ApiError:
    errors = error.errors()
    first = errors[0]
    if first["type"] == "json_invalid":
        reason = first.get("ctx", {}).get("error", "JSON decode error")
        return ApiError(400, f"The request body is not valid JSON: {reason}.", None, "invalid_json")
    if tuple(first["loc"]) == ("body",):
        return ApiError(400, "The request body must be a JSON object.", None, "invalid_body")
    param = _param(tuple(first["loc"]))
    reasons = [e["msg"] for e in errors if _param(tuple(e["loc"])) == param]
    message = f"{param}: {'; or '.join(dict.fromkeys(reasons))}"
    return ApiError(400, message, param, "invalid_value")


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> JSONResponse:
        return _error_response(error)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        return _error_response(_validation_error(error))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        codes = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}
        code = codes.get(error.status_code)
        api_error = ApiError(error.status_code, str(error.detail), None, code)
        return _error_response(api_error, error.headers)

    @app.exception_handler(UserError)
    async def user_error(request: Request, error: UserError) -> JSONResponse:
        return _error_response(ApiError(400, str(error), None, "invalid_request"))

    @app.exception_handler(ContextLengthError)
    async def context_error(request: Request, error: ContextLengthError) -> JSONResponse:
        return _error_response(ApiError(400, str(error), "messages", "context_length_exceeded"))

    @app.exception_handler(EngineBusy)
    async def busy(request: Request, error: EngineBusy) -> JSONResponse:
        retry = {"Retry-After": str(error.retry_after)}
        return _error_response(
            ApiError(429, str(error), None, "rate_limit_exceeded", "rate_limit_error", retry)
        )

    @app.exception_handler(EngineStopped)
    async def stopped(request: Request, error: EngineStopped) -> JSONResponse:
        retry = {"Retry-After": str(error.retry_after)}
        return _error_response(
            ApiError(503, str(error), None, "server_shutting_down", "server_error", retry)
        )


def create_app(
    engine: Engine,
    model_name: str,
    api_key: str | None = None,
    max_tokens: int | None = None,
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
    strict_model_name: bool = False,
) -> FastAPI:
    """Build the OpenAI-compatible app around an engine.

    Args:
        engine: A `tuneforge.inference` engine (prepare, submit, get_scores).
        model_name: The served model's id: what `/v1/models` lists and responses carry.
        api_key: When set, every request must carry `Authorization: Bearer <api_key>`.
        max_tokens: The most tokens one reply may ask for (`max_tokens`); None for no limit.
        max_request_bytes: The largest request body accepted; larger ones get 413.
        strict_model_name: Answer 404 to a request for another model than `model_name`
            (OpenAI's behaviour); by default any name is served by this model.

    Returns:
        The FastAPI app, ready for uvicorn (see `serve`).
    """
    app = FastAPI(title="tuneforge OpenAI-compatible API", docs_url=None, redoc_url=None)
    app.add_middleware(UnexpectedErrorMiddleware)  # innermost of ours: sees route errors
    app.add_middleware(BodyLimitMiddleware, max_bytes=max_request_bytes)
    if api_key:
        app.add_middleware(ApiKeyMiddleware, api_key=api_key)  # added last: runs first
    _install_error_handlers(app)
    service = ChatService(engine, model_name)
    created = int(time.time())

    def check(body: ChatCompletionRequest | ScoreRequest) -> None:
        invalid = lone_surrogate(body)  # first: nothing else may echo such text
        if invalid is not None:
            raise invalid
        if strict_model_name and body.model != model_name:
            raise _unknown_model(body.model, model_name)

    @app.get("/v1/models")
    async def list_models() -> ModelList:
        return ModelList(data=[ModelCard(id=model_name, created=created)])

    @app.get("/v1/models/{name:path}")
    async def retrieve_model(name: str) -> ModelCard:
        if strict_model_name and name != model_name:
            raise _unknown_model(name, model_name)
        return ModelCard(id=model_name, created=created)

    @app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(
        request: ChatCompletionRequest, raw: Request
    ) -> ChatCompletion | Response:
        check(request)
        if engine.is_reward_model:
            raise ApiError(
                400,
                "This server runs a reward model, which scores text but does not generate: "
                "use POST /v1/score/evaluation.",
                None,
                "unsupported",
            )
        unsupported = unsupported_fields(request)
        if unsupported is not None:
            raise unsupported
        job = prepare(request, max_tokens)
        try:
            if not request.stream:
                return await service.complete(job, raw.receive)
            events = await service.stream(job, raw.receive)
        except ClientGone:  # nobody to answer
            return Response(status_code=CLIENT_CLOSED_REQUEST)
        return StreamingResponse(
            events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )

    @app.post("/v1/score/evaluation")
    async def score(request: ScoreRequest) -> ScoreResponse:
        check(request)
        if not engine.is_reward_model:
            raise ApiError(
                400,
                "This server runs a generative model: scores need a reward model "
                "(a model trained with `stage: rm`).",
                None,
                "unsupported",
            )
        options = {} if request.max_length is None else {"max_length": request.max_length}
        # the pool thread waits for the engine's worker, which needs no pool thread
        scores = await run_in_threadpool(engine.get_scores, request.messages, **options)
        return ScoreResponse(
            id=f"scoreval-{uuid.uuid4().hex}", model=model_name, scores=list(scores)
        )

    return app


def _unknown_model(name: str, model_name: str) -> ApiError:
    return ApiError(
        404,
        f"The model {name!r} does not exist: this server serves {model_name!r}.",
        "model",
        "model_not_found",
    )


class DrainingServer(uvicorn.Server):
    """uvicorn's server that drains the engine as it starts shutting down (see `serve`)."""

    def __init__(self, config: uvicorn.Config, engine: Engine) -> None:
        super().__init__(config)
        self.engine = engine

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        logger.info("Stopping: in-flight answers end at their next token.")
        self.engine.drain()
        await super().shutdown(sockets)


def serve(
    app: FastAPI,
    engine: Engine,
    host: str,
    port: int,
    log_level: str = "info",
    sockets: list[socket.socket] | None = None,
) -> None:
    """Serve `app` until SIGTERM or SIGINT, then stop gracefully (see the module docstring).

    Args:
        app: The app of `create_app`.
        engine: Its engine, drained on shutdown.
        host: The interface to listen on.
        port: The port.
        log_level: uvicorn's log level.
        sockets: Already bound sockets to serve on instead of host and port.
    """
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        timeout_graceful_shutdown=SHUTDOWN_TIMEOUT_SECONDS,
    )
    DrainingServer(config, engine).run(sockets=sockets)
