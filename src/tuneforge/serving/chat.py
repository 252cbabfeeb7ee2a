"""Chat completions: a checked request -> the engine -> OpenAI's response or SSE chunks.

The engine's `prepare` (rendering, tokenizing, checks) runs on a few threads of its own
(`_PREPARING`); its `submit` queues the request and returns at once, and its events arrive from
the engine's own thread through `loop.call_soon_threadsafe` into an asyncio queue
(`EngineRun`). So no request holds a thread while the model generates: any number of clients
can wait without starving a thread pool, and a full engine answers 429 at once (`EngineBusy`,
checked before tokenizing too; see app.py). A client that disconnects cancels its request,
which frees its place at the next token; a streamed response learns of it from starlette, a
non-streamed one from `EngineRun` watching the connection.

Sampling maps onto transformers' generation keys: temperature 0 (or top_p 0) is greedy
decoding; a request that sets temperature, top_p or top_k samples; one that sets none of them
keeps the config's `do_sample`. Greedy decoding is deterministic, so `n` greedy choices are one
generation repeated; `n` sampled choices are `n` answers of one engine request, decoded in the
same batch. `presence_penalty` / `frequency_penalty` have no exact transformers equivalent and
are refused unless 0 (see `protocol.unsupported_fields`).

Streaming: a role chunk per choice, then content chunks as the engine's pieces come (choices
interleaved, each chunk naming its index), a chunk with each choice's finish reason; then, with
`stream_options.include_usage`, a chunk with the usage; then `data: [DONE]`. With tools shown
to the model, text is sent as it comes too, except what may turn out to be a tool call
(`tools.ToolCallStream`), which is sent as `tool_calls` once the reply is complete. The
response starts once the engine has produced the first event, so a request that fails before
(the engine stopping) still gets a proper status code; an error after that is sent as an
`error` event.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import json
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from starlette.types import Receive

from tuneforge.errors import UserError
from tuneforge.inference.engine import Done, Engine, Event, Failed, Piece, Prompt, Response
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
    ToolCallOut,
    Usage,
    error_body,
)
from tuneforge.serving.tools import ToolCallStream, parse_tool_calls, tools_for_prompt

logger = logging.getLogger(__name__)

_PREPARING = concurrent.futures.ThreadPoolExecutor(
    max_workers=min(4, os.cpu_count() or 1), thread_name_prefix="tuneforge-prepare"
)
"""Renders and tokenizes prompts off the event loop. A few threads: more would only contend
for the GIL with the event loop and the generation worker (a burst of requests then slows the
loop's answers, 429s included)."""


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


class ClientGone(Exception):
    """The client closed the connection before its answer was complete."""


_GONE = object()


class EngineRun:
    """One request submitted to the engine, seen from the event loop.

    The engine calls `_put` on its own thread; each event is handed to the loop with
    `call_soon_threadsafe`. While `receive` is given (before a streamed response starts), the
    connection is watched: a disconnect cancels the request and makes `next` raise ClientGone.

    Raises (from the constructor): EngineBusy, EngineStopped.
    """

    def __init__(self, engine: Engine, prompt: Prompt, receive: Receive | None) -> None:
        self._loop = asyncio.get_running_loop()
        self._events: asyncio.Queue[Any] = asyncio.Queue()
        self._ticket = engine.submit(prompt, self._put)
        self._watch = asyncio.ensure_future(self._watch_disconnect(receive)) if receive else None

    def _put(self, event: Event) -> None:
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody is listening any more
            self._loop.call_soon_threadsafe(self._events.put_nowait, event)

    async def _watch_disconnect(self, receive: Receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        self._events.put_nowait(_GONE)

    async def next(self) -> Piece | Done:
        """The next event.

        Raises:
            ClientGone: the client disconnected (the request is cancelled).
            Exception: the engine's error, when the request failed.
        """
        event = await self._events.get()
        if event is _GONE:
            self.cancel()
            raise ClientGone()
        if isinstance(event, Failed):
            self.stop_watching()
            raise event.error
        result: Piece | Done = event
        return result

    def stop_watching(self) -> None:
        """Stop watching the connection (a streamed response's own watch takes over)."""
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None

    def cancel(self) -> None:
        """Stop the request (no-op once it has finished)."""
        self.stop_watching()
        self._ticket.cancel()


@dataclass
class ChatService:
    """Runs chat jobs on one engine under one served model name.

    Attributes:
        engine: The inference engine (see `tuneforge.inference`).
        model_name: The name responses carry (the served model's).
    """

    engine: Engine
    model_name: str

    def _reply(
        self, job: ChatJob, text: str, finish_reason: FinishReason
    ) -> tuple[ResponseMessage, FinishReason]:
        """The assistant message for a reply, parsed into tool calls when tools were shown."""
        tool_format = self.engine.template.tool_format
        calls = parse_tool_calls(tool_format, text) if job.tools is not None else None
        if calls:
            return ResponseMessage(content=None, tool_calls=self._kept(job, calls)), "tool_calls"
        return ResponseMessage(content=text), finish_reason

    @staticmethod
    def _kept(job: ChatJob, calls: list[ToolCallOut]) -> list[ToolCallOut]:
        return calls[:1] if job.single_call else calls

    async def _start(self, job: ChatJob, receive: Receive) -> tuple[EngineRun, int]:
        """Check and submit the job; the run and how many answers the engine makes."""
        generation = dict(job.generation)
        if not job.greedy and job.n > 1:
            generation["num_return_sequences"] = job.n  # n answers in the same batch
        exact = "max_new_tokens" in generation  # the client's max_tokens must fit the context
        self.engine.capacity.check()  # a full engine refuses before tokenizing anything
        prepare = functools.partial(
            self.engine.prepare, job.messages, job.system, job.tools, exact, **generation
        )
        prompt = await asyncio.get_running_loop().run_in_executor(_PREPARING, prepare)
        return EngineRun(self.engine, prompt, receive), prompt.n

    async def complete(self, job: ChatJob, receive: Receive) -> ChatCompletion:
        """Generate every choice and answer with one `chat.completion` object.

        Raises:
            ClientGone: the client left before the answer was complete.
        """
        run, answers = await self._start(job, receive)
        responses: dict[int, Response] = {}
        try:
            while len(responses) < answers:
                event = await run.next()
                if isinstance(event, Done):
                    responses[event.index] = event.response
        finally:
            run.cancel()  # a no-op once complete
        ordered = [responses[index] for index in range(answers)]
        if job.greedy:
            ordered = ordered[:1] * job.n
        choices = []
        for index, response in enumerate(ordered):
            message, finish = self._reply(job, response.text, response.finish_reason)
            choices.append(Choice(index=index, message=message, finish_reason=finish))
        return ChatCompletion(
            id=_completion_id(),
            created=int(time.time()),
            model=self.model_name,
            choices=choices,
            usage=_usage(ordered),
        )

    async def stream(self, job: ChatJob, receive: Receive) -> AsyncIterator[str]:
        """Start streaming: returns once the engine's first event is in, so that errors
        before it raise here. The result yields SSE event texts.

        Raises:
            ClientGone: the client left before the first event.
        """
        run, answers = await self._start(job, receive)
        try:
            first = await run.next()
        except BaseException:
            run.cancel()
            raise
        run.stop_watching()  # from here on, starlette watches the connection
        return self._events(job, run, answers, first)

    async def _events(
        self, job: ChatJob, run: EngineRun, answers: int, first: Piece | Done
    ) -> AsyncIterator[str]:
        chunk = _ChunkMaker(_completion_id(), int(time.time()), self.model_name)
        tool_format = self.engine.template.tool_format
        splitters = [
            ToolCallStream(tool_format) if job.tools is not None else None for _ in range(job.n)
        ]
        # the engine's answer i is choice i; greedy choices all show answer 0
        shown = [list(range(job.n))] if job.greedy else [[index] for index in range(answers)]
        results: dict[int, Response] = {}
        event: Piece | Done | None = first
        try:
            for index in range(job.n):
                yield _sse(chunk(index, Delta(role="assistant", content="")))
            while len(results) < answers:
                if event is None:
                    event = await run.next()
                for index in shown[event.index]:
                    splitter = splitters[index]
                    if isinstance(event, Piece):
                        content = splitter.add(event.text) if splitter else event.text
                        if content:
                            yield _sse(chunk(index, Delta(content=content)))
                        continue
                    finish: FinishReason = event.response.finish_reason
                    if splitter is not None:
                        rest, calls = splitter.finish()
                        if calls:
                            deltas = [
                                ToolCallDelta(index=i, **call.model_dump())
                                for i, call in enumerate(self._kept(job, calls))
                            ]
                            yield _sse(chunk(index, Delta(tool_calls=deltas)))
                            finish = "tool_calls"
                        elif rest:
                            yield _sse(chunk(index, Delta(content=rest)))
                    yield _sse(chunk(index, Delta(), finish))
                if isinstance(event, Done):
                    results[event.index] = event.response
                event = None
            if job.include_usage:
                ordered = [results[index] for index in range(answers)]
                yield _sse(chunk.usage(_usage(ordered * job.n if job.greedy else ordered)))
        except UserError as error:
            yield _sse(error_body(str(error), "invalid_request_error", None, None))
            return
        except Exception as error:  # the response has started: report in the stream
            logger.exception("chat stream failed")
            yield _sse(error_body(f"internal error: {error}", "server_error", None, None))
            return
        finally:  # also when starlette cancels the stream (client gone)
            run.cancel()
        yield "data: [DONE]\n\n"


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


def _usage(responses: list[Response]) -> Usage:
    """Usage of a set of choices: the prompt counted once, every choice's tokens summed."""
    completion = sum(response.completion_tokens for response in responses)
    prompt = responses[0].prompt_tokens
    total = prompt + completion
    return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=total)
