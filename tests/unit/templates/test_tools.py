"""Tool formats: round trips, multiple calls, parsing, and errors that name the problem."""

from __future__ import annotations

import json

import pytest

from tuneforge.data.example import Message
from tuneforge.errors import ConfigError, DataError
from tuneforge.templates import TOOL_FORMATS, get_template, get_tool_format

from .cases import WEATHER_TOOLS

ONE = [{"name": "get_weather", "arguments": {"city": "Paris", "days": 3, "units": ["c", "f"]}}]
TWO = [
    *ONE,
    {"name": "get_time", "arguments": {"tz": "Europe/Paris", "nested": {"a": [1, {"b": None}]}}},
]
UNICODE = [{"name": "lookup", "arguments": {"q": "Zürich 天气 😀", "exact": True}}]


@pytest.mark.parametrize("calls", [ONE, UNICODE], ids=["one", "unicode"])
@pytest.mark.parametrize("fmt", sorted(TOOL_FORMATS))
def test_round_trip(fmt: str, calls: list[dict]) -> None:
    tool_format = get_tool_format(fmt)
    text = tool_format.format_calls(json.dumps(calls[0]))
    assert tool_format.parse_calls(text) == calls
    assert tool_format.parse_calls(tool_format.format_calls(json.dumps(calls))) == calls


@pytest.mark.parametrize("fmt", sorted(set(TOOL_FORMATS) - {"glm4"}))
def test_round_trip_multiple_calls(fmt: str) -> None:
    tool_format = get_tool_format(fmt)
    assert tool_format.parse_calls(tool_format.format_calls(json.dumps(TWO))) == TWO


def test_glm4_rejects_parallel_calls() -> None:
    with pytest.raises(DataError, match="one tool call per function message"):
        get_tool_format("glm4").format_calls(json.dumps(TWO))


@pytest.mark.parametrize("fmt", sorted(TOOL_FORMATS))
@pytest.mark.parametrize("text", ["The weather is nice.", "", "Action: x\nAction Input: {oops"])
def test_parse_plain_text_is_none(fmt: str, text: str) -> None:
    assert get_tool_format(fmt).parse_calls(text) is None


def test_parse_tolerates_decoded_markers() -> None:
    assert get_tool_format("mistral").parse_calls(
        '[TOOL_CALLS] [{"name": "f", "arguments": {}}]'
    ) == [{"name": "f", "arguments": {}}]
    qwen = 'Let me check.\n<tool_call>\n{"name": "f", "arguments": {"a": 1}}\n</tool_call>'
    assert get_tool_format("qwen").parse_calls(qwen) == [{"name": "f", "arguments": {"a": 1}}]


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ('{"name": "f", "arguments": {"a": 1}', "not valid JSON"),
        ("get_weather(city='Paris')", "not valid JSON"),
        ('{"arguments": {}}', "needs 'name' and 'arguments'"),
        ('{"name": "f"}', "needs 'name' and 'arguments'"),
        ('{"name": "f", "arguments": [1]}', "needs a JSON object as arguments"),
        ('{"name": "f", "arguments": "{bad"}', "arguments that are not valid JSON"),
        ("[]", "empty list"),
    ],
)
def test_malformed_function_message(content: str, problem: str) -> None:
    with pytest.raises(DataError, match=problem):
        get_tool_format("qwen").format_calls(content)
    messages = [Message("user", "q"), Message("function", content)]
    with pytest.raises(DataError, match=problem):
        get_template("qwen").render(messages)


def test_openai_style_calls_and_string_arguments() -> None:
    call = {"type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}
    assert get_tool_format("qwen").parse_calls(
        get_tool_format("qwen").format_calls(json.dumps(call))
    ) == [{"name": "f", "arguments": {"a": 1}}]


def test_wrapped_and_bare_tools_render_the_same() -> None:
    bare = json.loads(WEATHER_TOOLS)
    wrapped = json.dumps([{"type": "function", "function": t} for t in bare])
    for fmt in TOOL_FORMATS.values():
        if fmt.name == "seed_oss":  # LLaMA-Factory's seed_oss dumps the list as given
            assert fmt.format_tools(wrapped) != fmt.format_tools(WEATHER_TOOLS)
            continue
        assert fmt.format_tools(wrapped) == fmt.format_tools(WEATHER_TOOLS)


@pytest.mark.parametrize(
    ("tools", "problem"),
    [
        ("[{", "tools are not valid JSON"),
        ('[{"description": "x"}]', "has no 'name'"),
        ("[1]", "JSON object"),
    ],
)
def test_malformed_tools(tools: str, problem: str) -> None:
    with pytest.raises(DataError, match=problem):
        get_template("qwen").render([Message("user", "q"), Message("assistant", "a")], tools=tools)


def test_empty_tool_list_adds_nothing() -> None:
    messages = [Message("user", "q"), Message("assistant", "a")]
    t = get_template("qwen3")
    assert t.render(messages, tools="[]") == t.render(messages)


def test_tools_without_system_prompt_start_the_system_turn() -> None:
    # As the official Qwen templates: "<|im_start|>system\n# Tools..." with no blank lines first.
    text = get_template("qwen3").render_prompt([Message("user", "q")], tools=WEATHER_TOOLS)
    assert text.startswith("<|im_start|>system\n# Tools\n\nYou may call one or more functions")


def test_llama3_tool_prompt_has_no_date_of_today() -> None:
    text = get_tool_format("llama3").format_tools(WEATHER_TOOLS)
    assert text.startswith("Cutting Knowledge Date: December 2023\n\nYou have access")
    assert "Today Date" not in text


def test_unknown_tool_format() -> None:
    with pytest.raises(
        ConfigError, match=r"unknown tool_format 'qwen2'.*'qwen'.*Valid tool formats"
    ):
        get_tool_format("qwen2")
    with pytest.raises(ConfigError, match="unknown tool_format"):
        get_template("qwen", tool_format="nope")


def test_tool_format_override() -> None:
    t = get_template("chatml", tool_format="qwen")
    assert t.tool_format.name == "qwen"
    (turn,) = t.render([Message("user", "q"), Message("function", json.dumps(ONE[0]))])
    assert turn.response.startswith("<tool_call>\n")


# ---- the formats whose call text LLaMA-Factory writes without what its prompt shows ----------

CALL = {"name": "get_weather", "arguments": {"city": "Paris", "days": 3}}


@pytest.mark.parametrize(
    ("fmt", "text"),
    [
        # GLM's own template closes the call; LLaMA-Factory's text does not
        (
            "glm4_moe",
            "<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>Paris</arg_value>\n"
            "<arg_key>days</arg_key>\n<arg_value>3</arg_value>\n</tool_call>",
        ),
        # MiniMax-M2 wraps the invokes; LLaMA-Factory's text does not
        (
            "minimax2",
            '<minimax:tool_call>\n<invoke name="get_weather">\n<parameter name="city">Paris'
            '</parameter>\n<parameter name="days">3</parameter>\n</invoke>\n</minimax:tool_call>',
        ),
        # Seed-OSS writes `<function=name>`; LLaMA-Factory's text has no `>`
        (
            "seed_oss",
            "<seed:tool_call>\n<function=get_weather>\n<parameter=city>Paris</parameter>\n"
            "<parameter=days>3</parameter>\n</function>\n</seed:tool_call>",
        ),
        ("qwen3_5", "I will check.\n" + get_tool_format("qwen3_5").format_calls(json.dumps(CALL))),
        ("lfm2", '<|tool_call_start|>get_weather(city="Paris", days=3)<|tool_call_end|>'),
        ("gemma4", '<|tool_call>call:get_weather{city:<|"|>Paris<|"|>,days:3}<tool_call|>'),
    ],
)
def test_parse_the_models_own_call_text(fmt: str, text: str) -> None:
    assert get_tool_format(fmt).parse_calls(text) == [CALL]


def test_glm4_moe_call_text_is_llamafactorys() -> None:
    text = get_tool_format("glm4_moe").format_calls(json.dumps(TWO))
    assert text.startswith("\n<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>Paris")
    assert "</tool_call>" not in text
    assert '<arg_key>units</arg_key>\n<arg_value>["c", "f"]</arg_value>' in text


def test_lfm2_reads_json_literals_at_any_depth() -> None:
    text = '<|tool_call_start|>[f(a=true, b={"c": [null, false]}), g()]<|tool_call_end|>'
    assert get_tool_format("lfm2").parse_calls(text) == [
        {"name": "f", "arguments": {"a": True, "b": {"c": [None, False]}}},
        {"name": "g", "arguments": {}},
    ]
    assert get_tool_format("lfm2").parse_calls("<|tool_call_start|>[f(1)]<|tool_call_end|>") is None


def test_gemma4_notation() -> None:
    calls = [{"name": "f", "arguments": {"b": {"y": [1, "x"], "x": None}, "a": False, "s": "q"}}]
    text = get_tool_format("gemma4").format_calls(json.dumps(calls))
    assert text == (
        '<|tool_call>call:f{a:false,b:{x:null,y:[1,<|"|>x<|"|>]},s:<|"|>q<|"|>}<tool_call|>'
    )
    assert get_tool_format("gemma4").parse_calls(text) == calls
    tools = get_tool_format("gemma4").format_tools(WEATHER_TOOLS)
    assert tools.startswith('declaration:get_weather{description:<|"|>Get the current weather')
    assert 'required:[<|"|>city<|"|>],type:<|"|>OBJECT<|"|>}}' in tools


def test_ling_prompt_turns_thinking_off() -> None:
    text = get_tool_format("ling").format_tools(WEATHER_TOOLS)
    assert text.startswith("# Tools\n\n") and text.endswith("</tool_call>\ndetailed thinking off")
