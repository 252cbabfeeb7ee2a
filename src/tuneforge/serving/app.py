"""The FastAPI app: OpenAI-compatible routes over one inference engine.

Routes: GET /v1/models, GET /v1/models/{model}, POST /v1/chat/completions and
POST /v1/score/evaluation (reward models, LLaMA-Factory's shape). Every error, from a bad API key
to an unexpected exception, is answered with OpenAI's error body
`{"error": {"message", "type", "param", "code"}}`; pydantic's validation errors become 400
(OpenAI's status), not FastAPI's 422.

Pure ASGI middlewares run around the routes, outermost first: the API key check (so nothing
about a request is answered without the key), the request body size limit, and the answer to
unexpected errors.
"""

from __future__ import annotations

import hmac
import logging
import time
import uuid
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tuneforge.errors import UserError
from tuneforge.serving.chat import ChatService, prepare
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
    unsupported_fields,
)

logger = logging.getLogger(__name__)

DEFAULT_MAX_REQUEST_BYTES = 1 << 20


def _error_response(error: ApiError, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=headers)


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


def create_app(
    engine: Any,
    model_name: str,
    api_key: str | None = None,
    max_tokens: int | None = None,
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
) -> FastAPI:
    """Build the OpenAI-compatible app around an engine.

    Args:
        engine: A `tuneforge.inference` engine (chat, stream_chat, get_scores).
        model_name: The model id clients send as `model` and `/v1/models` lists.
        api_key: When set, every request must carry `Authorization: Bearer <api_key>`.
        max_tokens: The most tokens one reply may ask for (`max_tokens`); None for no limit.
        max_request_bytes: The largest request body accepted; larger ones get 413.

    Returns:
        The FastAPI app, ready for uvicorn.
    """
    app = FastAPI(title="tuneforge OpenAI-compatible API", docs_url=None, redoc_url=None)
    app.add_middleware(UnexpectedErrorMiddleware)  # innermost of ours: sees route errors
    app.add_middleware(BodyLimitMiddleware, max_bytes=max_request_bytes)
    if api_key:
        app.add_middleware(ApiKeyMiddleware, api_key=api_key)  # added last: runs first
    _install_error_handlers(app)
    service = ChatService(engine, model_name)
    created = int(time.time())

    def check_model(name: str) -> None:
        if name != model_name:
            raise ApiError(
                404,
                f"The model {name!r} does not exist: this server serves {model_name!r}.",
                "model",
                "model_not_found",
            )

    @app.get("/v1/models")
    async def list_models() -> ModelList:
        return ModelList(data=[ModelCard(id=model_name, created=created)])

    @app.get("/v1/models/{name:path}")
    async def retrieve_model(name: str) -> ModelCard:
        check_model(name)
        return ModelCard(id=model_name, created=created)

    @app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(
        request: ChatCompletionRequest,
    ) -> ChatCompletion | StreamingResponse:
        check_model(request.model)
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
        if not request.stream:
            return await service.complete(job)
        events = await service.stream(job)
        return StreamingResponse(
            events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )

    @app.post("/v1/score/evaluation")
    async def score(request: ScoreRequest) -> ScoreResponse:
        check_model(request.model)
        if not engine.is_reward_model:
            raise ApiError(
                400,
                "This server runs a generative model: scores need a reward model "
                "(a model trained with `stage: rm`).",
                None,
                "unsupported",
            )
        options = {} if request.max_length is None else {"max_length": request.max_length}
        scores = await run_in_threadpool(engine.get_scores, request.messages, **options)
        return ScoreResponse(
            id=f"scoreval-{uuid.uuid4().hex}", model=model_name, scores=list(scores)
        )

    return app
