"""alpaca, sharegpt and openai rows normalised into Examples; bad rows named precisely."""

from __future__ import annotations

import json

import pytest

from tuneforge.data.catalogue import parse_entry
from tuneforge.data.example import Message
from tuneforge.data.formats import RowError, to_example
from tuneforge.data.sources import Row

ALPACA = parse_entry(
    "a", {"file_name": "a.json", "columns": {"history": "history", "system": "system"}}, "info"
)
SHAREGPT = parse_entry(
    "s",
    {
        "file_name": "s.json",
        "formatting": "sharegpt",
        "columns": {"messages": "conversations", "tools": "tools"},
    },
    "info",
)


def row(fields):
    return Row(fields, "data.json row 7")


def test_alpaca_joins_instruction_and_input_and_unrolls_history():
    example = to_example(
        row(
            {
                "instruction": "Translate",
                "input": "bonjour",
                "output": "hello",
                "system": "Be brief.",
                "history": [["hi", "hello there"]],
            }
        ),
        ALPACA,
    )
    assert example.messages == (
        Message("user", "hi"),
        Message("assistant", "hello there"),
        Message("user", "Translate\nbonjour"),
        Message("assistant", "hello"),
    )
    assert example.system == "Be brief."
    assert example.origin == "data.json row 7"


def test_alpaca_ranking_and_kto():
    ranked = parse_entry(
        "r",
        {
            "file_name": "r.json",
            "ranking": True,
            "columns": {"prompt": "q", "chosen": "c", "rejected": "r"},
        },
        "i",
    )
    example = to_example(row({"q": "2+2?", "c": "4", "r": "5"}), ranked)
    assert example.chosen == Message("assistant", "4")
    assert example.rejected == Message("assistant", "5")
    kto = parse_entry("k", {"file_name": "k.json", "columns": {"kto_tag": "label"}}, "i")
    assert (
        to_example(row({"instruction": "a", "output": "b", "label": False}), kto).kto_tag is False
    )
    with pytest.raises(RowError, match="`label` .kto_tag. must be true or false"):
        to_example(row({"instruction": "a", "output": "b", "label": "maybe"}), kto)


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"input": "", "output": "x"}, "`instruction` .prompt. is missing or empty"),
        ({"instruction": 5, "output": "x"}, "`instruction` .prompt. must be a string, got int"),
        ({"instruction": "a", "output": ["x"]}, "`output` .response. must be a string, got a list"),
        ({"instruction": "a", "history": "no"}, "must be a list of \\[query, answer\\]"),
        ({"instruction": "a", "history": [["q"]]}, "turn 1 must be a \\[query, answer\\] pair"),
    ],
)
def test_bad_alpaca_rows_name_the_field(fields, expected):
    with pytest.raises(RowError, match=expected):
        to_example(row(fields), ALPACA)


def test_sharegpt_with_system_tools_function_calls_and_observations():
    tools = [{"name": "weather", "description": "Weather", "parameters": {"type": "object"}}]
    call = json.dumps({"name": "weather", "arguments": {"city": "Oslo"}})
    example = to_example(
        row(
            {
                "conversations": [
                    {"from": "system", "value": "You are helpful."},
                    {"from": "human", "value": "Weather in Oslo?"},
                    {"from": "function_call", "value": call},
                    {"from": "observation", "value": '{"temp": 3}'},
                    {"from": "gpt", "value": "It is 3 degrees."},
                ],
                "tools": json.dumps(tools),
            }
        ),
        SHAREGPT,
    )
    assert example.system == "You are helpful."
    assert [m.role for m in example.messages] == ["user", "function", "observation", "assistant"]
    assert json.loads(example.tools) == tools


@pytest.mark.parametrize(
    ("conversation", "expected"),
    [
        ([{"from": "gpt", "value": "hi"}], "message 1 is 'assistant' where a user"),
        (
            [{"from": "human", "value": "a"}, {"from": "human", "value": "b"}],
            "message 2 is 'user' where an assistant",
        ),
        ([{"from": "robot", "value": "a"}], "`from` is 'robot', expected one of"),
        ([{"from": "human", "value": None}], "message 1: `value` must be a string"),
        (
            [{"from": "human", "value": "a"}, {"from": "function_call", "value": "{oops"}],
            "message 2 .function call. is not valid JSON",
        ),
        (
            [{"from": "human", "value": "a"}, {"from": "system", "value": "late"}],
            "system message may only come first",
        ),
    ],
)
def test_bad_sharegpt_rows_name_the_message(conversation, expected):
    with pytest.raises(RowError, match=expected):
        to_example(row({"conversations": conversation}), SHAREGPT)


def test_sharegpt_preference_pairs():
    spec = parse_entry(
        "p",
        {
            "file_name": "p.json",
            "formatting": "sharegpt",
            "ranking": True,
            "columns": {"messages": "conversations", "chosen": "chosen", "rejected": "rejected"},
        },
        "i",
    )
    example = to_example(
        row(
            {
                "conversations": [{"from": "human", "value": "Capital of France?"}],
                "chosen": {"from": "gpt", "value": "Paris."},
                "rejected": {"from": "gpt", "value": "Lyon."},
            }
        ),
        spec,
    )
    assert example.messages == (
        Message("user", "Capital of France?"),
        Message("assistant", "Paris."),
    )
    assert example.rejected == Message("assistant", "Lyon.")
    with pytest.raises(RowError, match="`rejected` .rejected. must be an assistant message"):
        to_example(
            row(
                {
                    "conversations": [{"from": "human", "value": "q"}],
                    "chosen": {"from": "gpt", "value": "a"},
                    "rejected": {"from": "human", "value": "b"},
                }
            ),
            spec,
        )


def test_openai_messages_with_tool_calls():
    spec = parse_entry(
        "o", {"file_name": "o.json", "formatting": "openai", "columns": {"tools": "tools"}}, "i"
    )
    example = to_example(
        row(
            {
                "messages": [
                    {"role": "system", "content": "sys"},
                    {"role": "user", "content": "Weather?"},
                    {
                        "role": "assistant",
                        "content": "",
                        "tool_calls": [
                            {
                                "type": "function",
                                "function": {"name": "weather", "arguments": '{"city": "Oslo"}'},
                            }
                        ],
                    },
                    {"role": "tool", "content": "3C"},
                    {"role": "assistant", "content": "3 degrees."},
                ]
            }
        ),
        spec,
    )
    assert example.system == "sys"
    assert example.messages[1] == Message(
        "function", json.dumps({"name": "weather", "arguments": {"city": "Oslo"}})
    )
    assert example.messages[2] == Message("observation", "3C")
