"""The pure parts of serving under load: places (Capacity), the server's settings, text that is
not Unicode, tool calls held back while a reply streams, the web chat's opening settings."""

from __future__ import annotations

import json

import pytest

from tuneforge.cli.api import server_settings
from tuneforge.config.loader import build_config
from tuneforge.errors import ConfigError
from tuneforge.inference.engine import (
    Capacity,
    ContextLengthError,
    EngineBusy,
    EngineStopped,
    Limits,
)
from tuneforge.serving.protocol import ChatCompletionRequest, error_body, lone_surrogate
from tuneforge.serving.tools import CALL_STARTS, ToolCallStream
from tuneforge.templates import TOOL_FORMATS, get_tool_format
from tuneforge.webui.chat import initial_settings

CALLS = json.dumps([{"name": "get_weather", "arguments": {"city": "Paris"}}])


# ---- places -----------------------------------------------------------------------------------


def test_capacity_holds_concurrent_plus_queued_then_refuses_until_a_release():
    capacity = Capacity(Limits(max_concurrent=2, max_queue=1))
    for _ in range(3):
        capacity.acquire()
    with pytest.raises(EngineBusy):
        capacity.check()
    with pytest.raises(EngineBusy) as busy:
        capacity.acquire()
    assert busy.value.retry_after >= 1
    assert "API_MAX_CONCURRENT" in str(busy.value)
    capacity.release()
    capacity.acquire()
    assert capacity.held == 3
    capacity.stop()
    capacity.release()
    with pytest.raises(EngineStopped):
        capacity.acquire()


def test_context_length_errors_give_openais_counts():
    alone = ContextLengthError(4096, 9036, None)
    assert str(alone).startswith("This model's maximum context length is 4096 tokens.")
    assert "your messages resulted in 9036 tokens" in str(alone)
    both = ContextLengthError(4096, 4000, 200)
    assert "you requested 4200 tokens (4000 in the messages, 200 in the completion)" in str(both)


# ---- the server's settings ----------------------------------------------------------------------


def test_limits_and_strict_model_names_come_from_the_environment():
    config = build_config({"model_name_or_path": "some/model"})
    defaults = server_settings({}, config)
    assert defaults.limits == Limits()
    assert defaults.strict_model_name is False
    settings = server_settings(
        {"API_MAX_CONCURRENT": "4", "API_MAX_QUEUE": "0", "API_STRICT_MODEL_NAME": "true"}, config
    )
    assert settings.limits == Limits(max_concurrent=4, max_queue=0)
    assert settings.strict_model_name is True
    for name, value, words in [
        ("API_MAX_CONCURRENT", "0", "must be >= 1"),
        ("API_MAX_QUEUE", "-1", "must be >= 0"),
        ("API_MAX_QUEUE", "many", "must be an integer"),
        ("API_STRICT_MODEL_NAME", "maybe", "must be 1 or 0"),
    ]:
        with pytest.raises(ConfigError, match=words):
            server_settings({name: value}, config)


# ---- text that is not Unicode -------------------------------------------------------------------


def test_a_lone_surrogate_is_named_where_it_is():
    def request(**fields):
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields}
        return ChatCompletionRequest.model_validate(body)

    assert lone_surrogate(request()) is None
    assert lone_surrogate(request(messages=[{"role": "user", "content": "a😀b"}])) is None
    found = lone_surrogate(request(messages=[{"role": "user", "content": "a\ud800b"}]))
    assert (found.status, found.param, found.code) == (400, "messages[0].content", "invalid_value")
    assert "lone surrogate '\\ud800'" in found.message
    parts = [{"role": "user", "content": [{"type": "text", "text": "x\udfff"}]}]
    assert lone_surrogate(request(messages=parts)).param == "messages[0].content[0].text"
    assert lone_surrogate(request(stop=["ok", "\ud83d"])).param == "stop[1]"
    tool = {"type": "function", "function": {"name": "f", "description": "\udc00"}}
    assert lone_surrogate(request(tools=[tool])).param == "tools[0].function.description"
    found.message.encode("utf-8")  # the error itself can be sent
    assert error_body("bad \ud800", "t", None, None)["error"]["message"] == "bad \\ud800"


# ---- tool calls held back while a reply streams -----------------------------------------------


def stream(tool_format_name: str, text: str) -> tuple[list[str], str, list | None]:
    """The reply fed character by character: the content sent on the way, what `finish` sends
    as content, and the calls found."""
    splitter = ToolCallStream(get_tool_format(tool_format_name))
    sent = [content for char in text if (content := splitter.add(char))]
    rest, calls = splitter.finish()
    return sent, rest, calls


def test_every_tool_format_says_where_its_calls_begin():
    assert set(CALL_STARTS) == set(TOOL_FORMATS)


@pytest.mark.parametrize("name", sorted(TOOL_FORMATS))
def test_a_tool_call_is_never_sent_as_content(name):
    tool_format = get_tool_format(name)
    call = tool_format.format_calls(CALLS)
    start = CALL_STARTS[name]
    before = "Let me check. " if start.markers else ""
    sent, rest, calls = stream(name, before + call)
    assert [(c.function.name, json.loads(c.function.arguments)) for c in calls] == [
        ("get_weather", {"city": "Paris"})
    ]
    assert "".join(sent).strip() == before.strip()  # nothing of the call but blanks
    assert rest == ""


@pytest.mark.parametrize("name", sorted(TOOL_FORMATS))
def test_plain_text_streams_as_it_comes(name):
    text = "The weather in Paris is sunny.\nIt is 21 degrees, says the forecast."
    sent, rest, calls = stream(name, text)
    assert calls is None
    assert "".join(sent) + rest == text
    # only glm4 (a first line may be a tool's name) holds the first line back until the second
    first_line = len("The weather in Paris is sunny.")
    assert len("".join(sent)) >= (first_line if name == "glm4" else len(text) - 8)
    assert len(sent) > 10  # streamed piece by piece, not whole at the end


def test_text_that_may_still_become_a_marker_waits():
    splitter = ToolCallStream(get_tool_format("qwen"))
    assert splitter.add("Sure <tool") == "Sure "
    assert splitter.add("box>") == "<toolbox>"  # it did not become `<tool_call>`
    json_reply = ToolCallStream(get_tool_format("llama3"))
    assert json_reply.add("  ") == ""  # blank: the reply may still open with `{`
    assert json_reply.add('{"a": 1}') == ""
    assert json_reply.finish() == ('  {"a": 1}', None)  # JSON, but not a call


# ---- the web chat opens at the config's settings ----------------------------------------------


def test_the_web_chat_opens_at_the_configs_generation_settings():
    greedy = initial_settings(build_config({"do_sample": False, "max_new_tokens": 77}))
    assert greedy["temperature"] == 0.0  # the slider's greedy end, not 0.95
    assert greedy["max_new_tokens"] == 77
    sampled = initial_settings(build_config({"temperature": 0.6, "top_p": 0.8}))
    assert (sampled["temperature"], sampled["top_p"]) == (0.6, 0.8)
    by_length = initial_settings(build_config({"max_new_tokens": 0, "max_length": 300}))
    assert by_length["max_new_tokens"] == 300
    assert initial_settings(None)["temperature"] == 0.95  # LLaMA-Factory's defaults sample


# ---- vLLM's outputs become the same events (no vLLM needed) ----------------------------------


def test_vllm_outputs_become_the_engines_events():
    import asyncio
    from types import SimpleNamespace as Output

    from tuneforge.inference.engine import Done, Piece, Response
    from tuneforge.inference.vllm import VllmEngine

    def step(*answers):  # one RequestOutput: cumulative text per answer
        return Output(
            outputs=[
                Output(index=i, text=text, token_ids=[0] * len(text), finish_reason=reason)
                for i, (text, reason) in enumerate(answers)
            ]
        )

    steps = [
        step(("He", None), ("O", None)),
        step(("Hello", "stop"), ("OK", None)),
        step(("Hello", "stop"), ("OK!", "length")),
    ]
    engine = object.__new__(VllmEngine)  # no model: only the event logic
    engine._draining = False

    async def requests(prompt_ids, params):
        for output in steps:
            yield output

    engine._requests = requests
    events: list = []
    asyncio.run(engine._produce([1, 2, 3], Output(n=2), events.append))
    assert events == [
        Piece(0, "He"),
        Piece(1, "O"),
        Piece(0, "llo"),
        Done(0, Response("Hello", 3, 5, "stop")),
        Piece(1, "K"),
        Piece(1, "!"),
        Done(1, Response("OK!", 3, 3, "length")),
    ]

    async def hanging(prompt_ids, params):  # one output, then nothing until cancelled
        yield steps[0]
        await asyncio.sleep(3600)

    async def drained() -> list:
        got: list = []
        engine._requests = hanging
        task = asyncio.ensure_future(engine._produce([1], Output(n=2), got.append))
        while len(got) < 2:
            await asyncio.sleep(0.01)
        engine._draining = True
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return got

    cut = asyncio.run(drained())[2:]
    assert cut == [Done(0, Response("He", 1, 2, "length")), Done(1, Response("O", 1, 1, "length"))]
