"""Chat completions: a checked request -> engine calls -> OpenAI's response or SSE chunks.

The engine is synchronous; every call runs in starlette's thread pool, so the event loop keeps
serving other requests while a model generates.

Sampling maps onto transformers' generation keys: temperature 0 (or top_p 0) is greedy
decoding; a request that sets temperature, top_p or top_k samples; one that sets none of them
keeps the config's `do_sample`. Greedy decoding is deterministic, so `n` greedy choices are one
generation repeated. `presence_penalty` / `frequency_penalty` have no exact transformers
equivalent and are refused unless 0 (see `protocol.unsupported_fields`).

Streaming sends each choice in turn: a role chunk, content chunks as the engine yields text, and
a chunk with the finish reason; then, with `stream_options.include_usage`, a chunk with the
usage; then `data: [DONE]`. With tools shown to the model a reply can only be told apart from a
tool call once it is complete, so such a stream sends the whole reply (text or tool_calls) in one
chunk. An engine error after the response has started is sent as an `error` event.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Generator, Iterator
from dataclasses import dataclass
from typing import Any

import anyio
from starlette.concurrency import run_in_threadpool

from tuneforge.errors import UserError
from tuneforge.serving.messages import to_conversation
from tuneforge.serving.protocol import (
    MAX_STOP_WORDS,
    ApiError,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Choice,
    ChunkChoice,
    Delta,
    FinishReason,
    ResponseMessage,
    ToolCallDelta,
    Usage,
    error_body,
)
from tuneforge.serving.tools import parse_tool_calls, tools_for_prompt

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChatJob:
    """One checked request, ready for the engine.

    Attributes:
        messages: The engine's turns.
        system: The system prompt, or None for the template's default.
        tools: The tools as JSON text, or None when the model is shown no tools.
        generation: Generation keys for the engine, for one sequence.
        n: Choices to answer with.
        greedy: Decoding is greedy by request, so all choices are one generation repeated.
        single_call: Keep at most one tool call per reply (`parallel_tool_calls: false`).
        include_usage: Send a usage chunk at the end of a stream.
    """

    messages: list[dict[str, str]]
    system: str | None
    tools: str | None
    generation: dict[str, Any]
    n: int
    greedy: bool
    single_call: bool
    include_usage: bool


def _max_new_tokens(request: ChatCompletionRequest, limit: int | None) -> int | None:
    given = {
        name: value
        for name, value in (
            ("max_completion_tokens", request.max_completion_tokens),
            ("max_tokens", request.max_tokens),
        )
        if value is not None
    }
    if len(set(given.values())) > 1:
        raise ApiError(
            400, "max_tokens and max_completion_tokens differ; send one of them", "max_tokens"
        )
    if not given:
        return None
    name, value = next(iter(given.items()))
    if limit is not None and value > limit:
        raise ApiError(
            400,
            f"{name} is {value}, above this server's limit of {limit} tokens "
            "(set by the config's max_new_tokens or API_MAX_TOKENS)",
            name,
            "max_tokens_too_large",
        )
    return value


def _stop_words(stop: str | list[str] | None) -> list[str]:
    words = [stop] if isinstance(stop, str) else list(stop or [])
    if len(words) > MAX_STOP_WORDS:
        message = f"stop takes at most {MAX_STOP_WORDS} strings, got {len(words)}"
        raise ApiError(400, message, "stop")
    if any(word == "" for word in words):
        raise ApiError(400, "stop strings must not be empty", "stop")
    return words


def _sampling(request: ChatCompletionRequest) -> tuple[dict[str, Any], bool]:
    """Generation keys for sampling, and whether decoding is greedy by request."""
    if request.temperature == 0 or request.top_p == 0:
        return {"do_sample": False}, True
    keys: dict[str, Any] = {
        name: value
        for name, value in (
            ("temperature", request.temperature),
            ("top_p", request.top_p),
            ("top_k", request.top_k),
        )
        if value is not None
    }
    if keys:
        keys["do_sample"] = True
    return keys, False


def prepare(request: ChatCompletionRequest, max_tokens_limit: int | None) -> ChatJob:
    """Check a request against what the server can honour and map it for the engine.

    Args:
        request: The parsed request.
        max_tokens_limit: The most tokens one reply may ask for, or None for no limit.

    Returns:
        The job.

    Raises:
        ApiError: the request asks for something the server cannot do, or breaks a limit.
    """
    tools = tools_for_prompt(request)
    conversation = to_conversation(request.messages)
    generation, greedy = _sampling(request)
    max_new_tokens = _max_new_tokens(request, max_tokens_limit)
    if max_new_tokens is not None:
        generation["max_new_tokens"] = max_new_tokens
    if request.repetition_penalty is not None:
        generation["repetition_penalty"] = request.repetition_penalty
    stop = _stop_words(request.stop)
    if stop:
        generation["stop"] = stop
    return ChatJob(
        messages=conversation.messages,
        system=conversation.system,
        tools=tools,
        generation=generation,
        n=request.n,
        greedy=greedy,
        single_call=request.parallel_tool_calls is False,
        include_usage=bool(request.stream_options and request.stream_options.include_usage),
    )


def _completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def _sse(payload: ChatCompletionChunk | dict[str, Any]) -> str:
    """One server-sent event. Chunks keep `finish_reason: null` as OpenAI sends it; deltas
    carry only the fields they set."""
    data = payload
    if isinstance(payload, ChatCompletionChunk):
        data = payload.model_dump(exclude={"usage"} if payload.usage is None else set())
        for choice in data["choices"]:
            choice["delta"] = {k: v for k, v in choice["delta"].items() if v is not None}
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


def _step(iterator: Iterator[str]) -> tuple[bool, Any]:
    # StopIteration cannot cross from a worker thread into a coroutine: return it as a value.
    try:
        return False, next(iterator)
    except StopIteration as stop:
        return True, stop.value


class EngineStream:
    """One `engine.stream_chat` generator, read through the thread pool.

    An engine's stream generator may return its `Response` (token counts, finish reason) when
    it ends (`return response` in the generator); it is kept in `result`, and is None when the
    engine gives none. Closing the generator early (client gone) lets the engine stop.
    """

    def __init__(self, iterator: Iterator[str]) -> None:
        self._iterator = iterator
        self._pending: list[str] = []
        self.result: Any = None
        self.finished = False

    async def _next(self) -> str | None:
        done, value = await run_in_threadpool(_step, self._iterator)
        if done:
            self.result, self.finished = value, True
            return None
        return value

    async def start(self) -> None:
        """Read the first piece now, so that a request the engine refuses fails before any
        byte of the response is sent (and gets a proper status code)."""
        piece = await self._next()
        if piece is not None:
            self._pending.append(piece)

    async def pieces(self) -> AsyncIterator[str]:
        """The text pieces, as the engine yields them."""
        try:
            while self._pending:
                yield self._pending.pop(0)
            while (piece := await self._next()) is not None:
                yield piece
        finally:
            await self.close()

    async def close(self) -> None:
        if self.finished or not isinstance(self._iterator, Generator):
            return
        self.finished = True
        # Shielded: this runs while the stream's task is being cancelled (client disconnect).
        with anyio.CancelScope(shield=True):
            await run_in_threadpool(self._iterator.close)


@dataclass
class ChatService:
    """Runs chat jobs on one engine under one served model name.

    Attributes:
        engine: The inference engine (see `tuneforge.inference`).
        model_name: The name clients send as `model`, and the one responses carry.
    """

    engine: Any
    model_name: str

    def _reply(
        self, job: ChatJob, text: str, finish_reason: FinishReason
    ) -> tuple[ResponseMessage, FinishReason]:
        """The assistant message for a reply, parsed into tool calls when tools were shown."""
        tool_format = self.engine.template.tool_format
        calls = parse_tool_calls(tool_format, text) if job.tools is not None else None
        if calls:
            kept = calls[:1] if job.single_call else calls
            return ResponseMessage(content=None, tool_calls=kept), "tool_calls"
        return ResponseMessage(content=text), finish_reason

    async def complete(self, job: ChatJob) -> ChatCompletion:
        """Generate every choice and answer with one `chat.completion` object."""
        generation = dict(job.generation)
        if not job.greedy and job.n > 1:
            generation["num_return_sequences"] = job.n
        responses = await run_in_threadpool(
            self.engine.chat, job.messages, job.system, job.tools, **generation
        )
        if job.greedy:
            responses = responses[:1] * job.n
        choices = []
        for index, response in enumerate(responses):
            message, finish = self._reply(job, response.text, response.finish_reason)
            choices.append(Choice(index=index, message=message, finish_reason=finish))
        return ChatCompletion(
            id=_completion_id(),
            created=int(time.time()),
            model=self.model_name,
            choices=choices,
            usage=_usage(responses),
        )

    async def _open(self, job: ChatJob) -> EngineStream:
        # stream_chat checks the request and renders the prompt at once: off the event loop
        iterator = await run_in_threadpool(
            self.engine.stream_chat, job.messages, job.system, job.tools, **job.generation
        )
        return EngineStream(iterator)

    async def stream(self, job: ChatJob) -> AsyncIterator[str]:
        """Start streaming: the first choice's first piece is read before this returns, so
        engine errors on the request raise here. The result yields SSE event texts."""
        first = await self._open(job)
        await first.start()
        return self._events(job, first)

    async def _events(self, job: ChatJob, first: EngineStream) -> AsyncIterator[str]:
        chunk = _ChunkMaker(_completion_id(), int(time.time()), self.model_name)
        results: list[Any] = []  # each choice's final Response (None: the stream gave none)
        first_pieces: list[str] = []
        try:
            for index in range(job.n):
                stream: EngineStream | _Replay = first
                if index and job.greedy:
                    stream = _Replay(first_pieces, results[0])
                elif index:
                    stream = await self._open(job)
                recorded: list[str] = first_pieces if index == 0 else []
                async for event in self._choice_events(job, index, stream, chunk, recorded):
                    yield event
                results.append(stream.result)
            if job.include_usage and None not in results:
                yield _sse(chunk.usage(_usage(results)))
            elif job.include_usage:
                logger.warning("usage left out of a stream: the engine's stream gave no counts")
        except UserError as error:
            yield _sse(error_body(str(error), "invalid_request_error", None, None))
            return
        except Exception as error:  # the response has started: report in the stream
            logger.exception("chat stream failed")
            yield _sse(error_body(f"internal error: {error}", "server_error", None, None))
            return
        yield "data: [DONE]\n\n"

    async def _choice_events(
        self,
        job: ChatJob,
        index: int,
        stream: EngineStream | _Replay,
        chunk: _ChunkMaker,
        recorded: list[str],
    ) -> AsyncIterator[str]:
        yield _sse(chunk(index, Delta(role="assistant", content="")))
        if job.tools is None:
            async for piece in stream.pieces():
                recorded.append(piece)
                yield _sse(chunk(index, Delta(content=piece)))
            yield _sse(chunk(index, Delta(), _finish_reason(stream.result)))
            return
        async for piece in stream.pieces():
            recorded.append(piece)
        message, finish = self._reply(job, "".join(recorded), _finish_reason(stream.result))
        if message.tool_calls:
            calls = [
                ToolCallDelta(index=i, **call.model_dump())
                for i, call in enumerate(message.tool_calls)
            ]
            yield _sse(chunk(index, Delta(tool_calls=calls)))
        elif message.content:
            yield _sse(chunk(index, Delta(content=message.content)))
        yield _sse(chunk(index, Delta(), finish))


class _Replay:
    """A finished stream played again (greedy choices after the first)."""

    def __init__(self, pieces: list[str], result: Any) -> None:
        self._pieces, self.result = list(pieces), result

    async def pieces(self) -> AsyncIterator[str]:
        for piece in self._pieces:
            yield piece


@dataclass(frozen=True)
class _ChunkMaker:
    id: str
    created: int
    model: str

    def __call__(
        self, index: int, delta: Delta, finish_reason: FinishReason | None = None
    ) -> ChatCompletionChunk:
        choice = ChunkChoice(index=index, delta=delta, finish_reason=finish_reason)
        return ChatCompletionChunk(
            id=self.id, created=self.created, model=self.model, choices=[choice]
        )

    def usage(self, usage: Usage) -> ChatCompletionChunk:
        """The closing chunk of `stream_options.include_usage`: no choices, only the counts."""
        return ChatCompletionChunk(
            id=self.id, created=self.created, model=self.model, choices=[], usage=usage
        )


def _finish_reason(result: Any) -> FinishReason:
    # "stop" when the engine's stream did not say why it ended (see EngineStream)
    return "stop" if result is None else result.finish_reason


def _usage(responses: list[Any]) -> Usage:
    """Usage of a set of choices: the prompt counted once, every choice's tokens summed."""
    completion = sum(response.completion_tokens for response in responses)
    prompt = responses[0].prompt_tokens
    total = prompt + completion
    return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=total)
