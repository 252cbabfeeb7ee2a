"""Request and response bodies of the OpenAI-compatible API, in OpenAI's shapes.

Requests are checked here for shape and type (pydantic turns a mismatch into a 400); what the
server can honour is checked by `unsupported_fields`, so a field that would change the answer is
never silently ignored. Unknown fields that OpenAI does not define are ignored, as OpenAI does.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_CHOICES = 8
"""Most choices one request may ask for (`n`): each one is a full generation."""
MAX_STOP_WORDS = 8


class ApiError(Exception):
    """An error answered with OpenAI's error body.

    Attributes:
        status: HTTP status code.
        message: What went wrong and how to fix it.
        param: The request field at fault (`messages[2].content`), or None.
        code: A short machine-readable code, or None.
        kind: OpenAI's error `type`.
        headers: Extra response headers (`Retry-After`).
    """

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        kind: str = "invalid_request_error",
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = (
            status,
            message,
            param,
            code,
            kind,
        )
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        """The JSON body: `{"error": {"message", "type", "param", "code"}}`."""
        return error_body(self.message, self.kind, self.param, self.code)


def error_body(message: str, kind: str, param: str | None, code: str | None) -> dict[str, Any]:
    """OpenAI's error body. Text that cannot be encoded as UTF-8 (a lone surrogate echoed from
    a request) is escaped, so that the body can always be sent."""
    return {"error": {"message": _encodable(message), "type": kind, "param": param, "code": code}}


def _encodable(text: str) -> str:
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def lone_surrogate(body: BaseModel) -> ApiError | None:
    """A 400 naming the first text of a request that holds a lone surrogate (JSON's
    `"\\ud800"` without its pair: not Unicode text, so no tokenizer can encode it), or None."""
    found = _surrogate_at(body.model_dump(exclude_none=True), "")
    if found is None:
        return None
    param, char = found
    return ApiError(
        400,
        f"{param or 'the request'} is not valid Unicode text: it holds the lone surrogate "
        f"{char!a} (a UTF-16 surrogate without its pair); send well-formed UTF-8.",
        param or None,
        "invalid_value",
    )


def _surrogate_at(value: Any, path: str) -> tuple[str, str] | None:
    if isinstance(value, str):
        for char in value:
            if "\ud800" <= char <= "\udfff":
                return path, char
        return None
    items: Any = ()
    if isinstance(value, dict):
        for key in value:
            if (found := _surrogate_at(key, path)) is not None:
                return found
        items = ((f"{path}.{key}" if path else str(key), item) for key, item in value.items())
    elif isinstance(value, (list, tuple)):
        items = ((f"{path}[{index}]", item) for index, item in enumerate(value))
    for where, item in items:
        if (found := _surrogate_at(item, where)) is not None:
            return found
    return None


# ---- requests -------------------------------------------------------------------------------


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ContentPart(_Request):
    """One part of a multi-part content array; only `text` parts are accepted."""

    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class FunctionCallIn(_Request):
    name: str = Field(min_length=1)
    arguments: str


class ToolCallIn(_Request):
    id: str | None = None
    type: Literal["function"] = "function"
    function: FunctionCallIn


class ChatMessage(_Request):
    """A message of the conversation (`developer` is OpenAI's newer name for `system`)."""

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCallIn] | None = None
    tool_call_id: str | None = None


class FunctionDefinition(_Request):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")
    description: str | None = None
    # a dict keeps the user's key order, so the prompt shows the schema as written
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(_Request):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(_Request):
    name: str


class NamedToolChoice(_Request):
    type: Literal["function"]
    function: NamedFunction


class StreamOptions(_Request):
    include_usage: bool = False


class ChatCompletionRequest(_Request):
    """POST /v1/chat/completions. `top_k` and `repetition_penalty` are extensions (vLLM's names,
    passed with the openai client's `extra_body`)."""

    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    n: int = Field(1, ge=1, le=MAX_CHOICES)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    top_k: int | None = Field(None, ge=1)
    repetition_penalty: float | None = Field(None, gt=0)
    # OpenAI fields this server cannot honour; see `unsupported_fields`.
    logprobs: bool | None = None
    top_logprobs: int | None = None
    logit_bias: dict[str, float] | None = None
    response_format: dict[str, Any] | None = None
    seed: int | None = None
    functions: list[Any] | None = None
    function_call: Any = None
    audio: Any = None
    modalities: list[str] | None = None
    prediction: Any = None


_UNSUPPORTED: dict[str, str] = {
    "presence_penalty": "transformers has no additive presence penalty (its repetition_penalty "
    "is multiplicative, a different formula); leave it out or set 0, or pass "
    "`repetition_penalty` instead",
    "frequency_penalty": "transformers has no additive frequency penalty (its repetition_penalty "
    "is multiplicative, a different formula); leave it out or set 0, or pass "
    "`repetition_penalty` instead",
    "logprobs": "log probabilities are not returned by this server",
    "top_logprobs": "log probabilities are not returned by this server",
    "logit_bias": "logit_bias is not supported by this server",
    "response_format": "structured output (response_format) is not supported; only "
    '{"type": "text"} is',
    "seed": "seeded sampling is not supported by this server; use temperature 0 for "
    "reproducible (greedy) output",
    "functions": "the legacy `functions` field is not supported; use `tools`",
    "function_call": "the legacy `function_call` field is not supported; use `tool_choice`",
    "audio": "audio output is not supported: this server runs a text model",
    "modalities": 'only the "text" modality is supported',
    "prediction": "predicted outputs are not supported by this server",
}


def unsupported_fields(request: ChatCompletionRequest) -> ApiError | None:
    """The first field set to a value the server cannot honour, as a 400, or None."""
    for field, reason in _UNSUPPORTED.items():
        value = getattr(request, field)
        harmless = (
            value in (None, 0, False)
            or (field == "logit_bias" and value == {})
            or (field == "response_format" and value == {"type": "text"})
            or (field == "modalities" and value == ["text"])
        )
        if not harmless:
            return ApiError(400, f"`{field}` is not supported: {reason}.", field, "unsupported")
    return None


class ScoreRequest(_Request):
    """POST /v1/score/evaluation (LLaMA-Factory's reward-model endpoint)."""

    model: str
    messages: list[str] = Field(min_length=1)
    max_length: int | None = Field(None, ge=1)


REQUEST_FIELDS = frozenset(
    name
    for model in (
        ContentPart,
        FunctionCallIn,
        ToolCallIn,
        ChatMessage,
        FunctionDefinition,
        Tool,
        NamedFunction,
        NamedToolChoice,
        StreamOptions,
        ChatCompletionRequest,
        ScoreRequest,
    )
    for name in model.model_fields
)
"""Every field name of a request body, to name the field at fault in an error."""


# ---- responses ------------------------------------------------------------------------------


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "tuneforge"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class FunctionCallOut(BaseModel):
    name: str
    arguments: str  # JSON text, as OpenAI sends it


class ToolCallOut(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCallOut


class ResponseMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    tool_calls: list[ToolCallOut] | None = None


FinishReason = Literal["stop", "length", "tool_calls"]


class Choice(BaseModel):
    index: int
    message: ResponseMessage
    finish_reason: FinishReason
    logprobs: None = None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage


class ToolCallDelta(ToolCallOut):
    index: int


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None


class ChunkChoice(BaseModel):
    index: int
    delta: Delta
    finish_reason: FinishReason | None = None
    logprobs: None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None


class ScoreResponse(BaseModel):
    id: str
    object: Literal["score.evaluation"] = "score.evaluation"
    model: str
    scores: list[float]
