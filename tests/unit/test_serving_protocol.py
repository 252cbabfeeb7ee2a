"""The API's request checks and its OpenAI <-> engine mappings (messages, tools, sampling)."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from tuneforge.serving.chat import prepare
from tuneforge.serving.messages import to_conversation
from tuneforge.serving.protocol import (
    ApiError,
    ChatCompletionRequest,
    ChatMessage,
    unsupported_fields,
)
from tuneforge.serving.tools import parse_tool_calls, tools_for_prompt
from tuneforge.templates import TOOL_FORMATS, get_template, get_tool_format

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather of a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}},
            "required": ["city"],
        },
        "strict": True,
    },
}
CALL = {
    "id": "call_1",
    "type": "function",
    "function": {"name": "get_weather", "arguments": '{"city": "Zürich", "unit": "c"}'},
}


def request(**fields) -> ChatCompletionRequest:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields}
    return ChatCompletionRequest.model_validate(body)


def messages(*items: dict) -> list[ChatMessage]:
    return [ChatMessage.model_validate(item) for item in items]


def api_error(call, *args, **kwargs) -> ApiError:
    with pytest.raises(ApiError) as caught:
        call(*args, **kwargs)
    assert caught.value.status == 400
    return caught.value


# ---- messages -------------------------------------------------------------------------------


def test_roles_map_to_the_engine_roles_and_system_prompts_join():
    conversation = to_conversation(
        messages(
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": [{"type": "text", "text": "Use tools."}]},
            {
                "role": "user",
                "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
            },
            {"role": "assistant", "content": None, "tool_calls": [CALL]},
            {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 3}'},
            {"role": "assistant", "content": "3 degrees."},
            {"role": "user", "content": "thanks"},
        )
    )
    assert conversation.system == "Be brief.\nUse tools."
    assert conversation.messages == [
        {"role": "user", "content": "a\nb"},
        {
            "role": "function",
            "content": json.dumps(
                [{"name": "get_weather", "arguments": {"city": "Zürich", "unit": "c"}}],
                ensure_ascii=False,
            ),
        },
        {"role": "observation", "content": '{"temp": 3}'},
        {"role": "assistant", "content": "3 degrees."},
        {"role": "user", "content": "thanks"},
    ]


def test_parallel_tool_results_become_one_observation():
    second = {**CALL, "id": "call_2"}
    conversation = to_conversation(
        messages(
            {"role": "user", "content": "weather in two cities"},
            {"role": "assistant", "tool_calls": [CALL, second]},
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
            {"role": "tool", "tool_call_id": "call_2", "content": "rain"},
        )
    )
    assert conversation.system is None
    assert [m["role"] for m in conversation.messages] == ["user", "function", "observation"]
    assert len(json.loads(conversation.messages[1]["content"])) == 2
    assert conversation.messages[2]["content"] == "sunny\nrain"


def test_function_message_renders_like_the_template_renders_training_data():
    # The mapped function turn goes through the template exactly as a dataset's would.
    conversation = to_conversation(
        messages(
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "tool_calls": [CALL]},
            {"role": "tool", "content": "sunny"},
        )
    )
    prompt = get_template("qwen").render_prompt(conversation.messages, system="s")
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Zürich"' in prompt
    assert "<tool_response>\nsunny\n</tool_response>" in prompt


@pytest.mark.parametrize(
    ("items", "param", "problem"),
    [
        ([{"role": "system", "content": "s"}], "messages", "only system messages"),
        (
            [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
            "messages[1].role",
            "must be from the user or a tool",
        ),
        (
            [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
            "messages[1].role",
            "must alternate user",
        ),
        ([{"role": "assistant", "content": "a"}], "messages[0].role", "must alternate"),
        (
            [
                {"role": "user", "content": "a"},
                {"role": "system", "content": "s"},
                {"role": "user", "content": "b"},
            ],
            "messages[1].role",
            "system messages must come first",
        ),
        (
            [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}],
            "messages[0].content[0]",
            "only text content is supported",
        ),
        ([{"role": "user"}], "messages[0].content", "is required"),
        (
            [{"role": "user", "content": "a"}, {"role": "tool", "content": "r"}],
            "messages[1].role",
            "does not follow an assistant message with tool_calls",
        ),
        (
            [
                {"role": "user", "content": "a"},
                {
                    "role": "assistant",
                    "tool_calls": [{**CALL, "function": {"name": "f", "arguments": "{x"}}],
                },
                {"role": "tool", "content": "r"},
            ],
            "messages[1].tool_calls[0].function.arguments",
            "not valid JSON",
        ),
        (
            [
                {"role": "user", "content": "a"},
                {
                    "role": "assistant",
                    "tool_calls": [{**CALL, "function": {"name": "f", "arguments": "[1]"}}],
                },
                {"role": "tool", "content": "r"},
            ],
            "messages[1].tool_calls[0].function.arguments",
            "must be a JSON object",
        ),
        (
            [
                {"role": "user", "content": "a"},
                {"role": "assistant"},
                {"role": "user", "content": "b"},
            ],
            "messages[1]",
            "without content or tool_calls",
        ),
    ],
)
def test_bad_conversations_are_refused_naming_the_message(items, param, problem):
    error = api_error(to_conversation, messages(*items))
    assert error.param == param
    assert problem in error.message


# ---- tools ----------------------------------------------------------------------------------


def test_tools_reach_the_engine_as_bare_schemas_in_order():
    shown = json.loads(tools_for_prompt(request(tools=[WEATHER])))
    assert shown == [
        {key: WEATHER["function"][key] for key in ("name", "description", "parameters")}
    ]
    assert list(shown[0]["parameters"]["properties"]) == ["city", "unit"]  # order kept
    assert tools_for_prompt(request(tools=[WEATHER], tool_choice="auto")) is not None


def test_tool_choice_none_hides_the_tools():
    assert tools_for_prompt(request(tools=[WEATHER], tool_choice="none")) is None
    assert tools_for_prompt(request()) is None


@pytest.mark.parametrize(
    "choice", ["required", {"type": "function", "function": {"name": "get_weather"}}]
)
def test_forced_tool_calls_are_refused(choice):
    error = api_error(tools_for_prompt, request(tools=[WEATHER], tool_choice=choice))
    assert error.param == "tool_choice"
    assert "cannot force" in error.message


def test_repeated_tool_names_are_refused():
    error = api_error(tools_for_prompt, request(tools=[WEATHER, WEATHER]))
    assert "get_weather" in error.message


@pytest.mark.parametrize("fmt", sorted(TOOL_FORMATS))
def test_model_output_in_the_template_tool_format_parses_into_openai_tool_calls(fmt):
    tool_format = get_tool_format(fmt)
    calls = [{"name": "get_weather", "arguments": {"city": "Zürich", "days": [1, 2]}}]
    text = tool_format.format_calls(json.dumps(calls))
    parsed = parse_tool_calls(tool_format, text)
    assert [(c.type, c.function.name) for c in parsed] == [("function", "get_weather")]
    assert json.loads(parsed[0].function.arguments) == calls[0]["arguments"]
    assert parsed[0].id.startswith("call_")
    assert parse_tool_calls(tool_format, "It is sunny in Zürich.") is None


def test_parallel_calls_get_distinct_ids():
    tool_format = get_tool_format("qwen")
    calls = [{"name": "a", "arguments": {}}, {"name": "b", "arguments": {"x": 1}}]
    parsed = parse_tool_calls(tool_format, tool_format.format_calls(json.dumps(calls)))
    assert [c.function.name for c in parsed] == ["a", "b"]
    assert len({c.id for c in parsed}) == 2


def test_a_tool_call_round_trips_from_openai_history_to_model_text_and_back():
    conversation = to_conversation(
        messages(
            {"role": "user", "content": "q"},
            {"role": "assistant", "tool_calls": [CALL]},
            {"role": "tool", "content": "r"},
        )
    )
    tool_format = get_tool_format("llama3")
    text = tool_format.format_calls(conversation.messages[1]["content"])
    (parsed,) = parse_tool_calls(tool_format, text)
    assert parsed.function.name == CALL["function"]["name"]
    assert json.loads(parsed.function.arguments) == json.loads(CALL["function"]["arguments"])


# ---- sampling and limits ----------------------------------------------------------------------


def test_temperature_zero_is_greedy_and_n_repeats_one_generation():
    job = prepare(request(temperature=0, n=3, stop="END", max_tokens=5), max_tokens_limit=10)
    assert job.generation == {"do_sample": False, "max_new_tokens": 5, "stop": ["END"]}
    assert (job.greedy, job.n) == (True, 3)
    assert prepare(request(top_p=0), None).generation == {"do_sample": False}


def test_sampling_keys_switch_sampling_on_and_unset_ones_keep_the_config():
    job = prepare(request(temperature=0.7, top_p=0.9, top_k=5, n=2, stop=["a", "b"]), None)
    assert job.generation == {
        "do_sample": True,
        "temperature": 0.7,
        "top_p": 0.9,
        "top_k": 5,
        "stop": ["a", "b"],
    }
    assert not job.greedy
    assert prepare(request(), None).generation == {}
    assert prepare(request(repetition_penalty=1.2), None).generation == {"repetition_penalty": 1.2}


def test_max_completion_tokens_is_max_tokens_and_the_limit_holds():
    assert prepare(request(max_completion_tokens=7), 7).generation["max_new_tokens"] == 7
    error = api_error(prepare, request(max_completion_tokens=8), 7)
    assert (error.param, error.code) == ("max_completion_tokens", "max_tokens_too_large")
    assert "limit of 7" in error.message
    error = api_error(prepare, request(max_tokens=3, max_completion_tokens=4), None)
    assert "differ" in error.message


@pytest.mark.parametrize("stop", [[""], [str(i) for i in range(9)]])
def test_bad_stop_lists_are_refused(stop):
    assert api_error(prepare, request(stop=stop), None).param == "stop"


def test_parallel_tool_calls_false_keeps_one_call():
    assert prepare(request(parallel_tool_calls=False), None).single_call
    assert not prepare(request(), None).single_call


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("presence_penalty", 0.5),
        ("frequency_penalty", -1.0),
        ("logprobs", True),
        ("logit_bias", {"1": 5.0}),
        ("response_format", {"type": "json_object"}),
        ("seed", 1),
        ("functions", [{"name": "f"}]),
    ],
)
def test_fields_the_server_cannot_honour_are_refused(field, value):
    error = unsupported_fields(request(**{field: value}))
    assert (error.status, error.param, error.code) == (400, field, "unsupported")
    assert field in error.message


def test_neutral_values_of_unsupported_fields_pass():
    neutral = request(
        presence_penalty=0,
        frequency_penalty=0.0,
        logprobs=False,
        logit_bias={},
        response_format={"type": "text"},
        modalities=["text"],
        user="someone",  # unknown to us, harmless: ignored as OpenAI ignores it
    )
    assert unsupported_fields(neutral) is None


@pytest.mark.parametrize(
    "fields",
    [
        {"messages": []},
        {"temperature": 2.5},
        {"temperature": "hot"},
        {"n": 0},
        {"n": 9},
        {"top_p": 1.5},
        {"max_tokens": 0},
        {"messages": [{"role": "function", "content": "x"}]},
        {"tools": [{"type": "function", "function": {"name": "bad name!"}}]},
        {"tool_choice": "sometimes"},
    ],
)
def test_shape_and_range_errors(fields):
    with pytest.raises(ValidationError):
        request(**fields)
