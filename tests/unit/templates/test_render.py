"""Properties every template keeps, and the input checks."""

from __future__ import annotations

import pytest

from tuneforge.data.example import Message
from tuneforge.errors import DataError
from tuneforge.templates import TEMPLATES, get_template

from .cases import CASES, golden_template

M = Message


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_each_prompt_is_render_prompt_of_the_history(name: str, case: str) -> None:
    template = golden_template(name)
    c = CASES[case]
    messages = list(c.messages)
    turns = template.render(messages, c.system, c.tools)
    assert len(turns) == len(messages) // 2
    done = ""
    for k, turn in enumerate(turns):
        assert done + turn.prompt == template.render_prompt(
            messages[: 2 * k + 1], c.system, c.tools
        )
        done += turn.prompt + turn.response


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_responses_hold_no_trailing_separator(name: str) -> None:
    template = golden_template(name)
    c = CASES["multiturn"]
    turns = template.render(list(c.messages), c.system)
    assert turns[0].response.endswith(
        "4"
        + template.assistant.split("{content}")[1].format_map(
            {"eos_token": template.eos_token or "", "bos_token": template.bos_token or ""}
        )
    )
    assert turns[1].prompt.startswith(template.separator)


def test_accepts_mappings() -> None:
    t = get_template("chatml")
    as_dicts = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    assert t.render(as_dicts) == t.render([M("user", "q"), M("assistant", "a")])


@pytest.mark.parametrize(
    ("messages", "problem"),
    [
        ([], "at least one message"),
        ([M("assistant", "a")], "message 0 has role 'assistant'"),
        ([M("user", "q"), M("user", "q2")], "message 1 has role 'user'"),
        (
            [M("user", "q"), M("assistant", "a"), M("function", "{}")],
            "message 2 has role 'function'",
        ),
        ([M("user", "q")], "ends with a response"),
        ([M("user", "q"), M("system", "s")], "message 1 has role 'system'"),  # type: ignore[arg-type]
    ],
)
def test_render_rejects_bad_conversations(messages: list[Message], problem: str) -> None:
    with pytest.raises(DataError, match=problem):
        get_template("qwen").render(messages)


def test_render_prompt_needs_a_prompt_last() -> None:
    with pytest.raises(DataError, match="ends with a user/observation turn"):
        get_template("qwen").render_prompt([M("user", "q"), M("assistant", "a")])


def test_system_none_or_empty_means_default() -> None:
    t = get_template("qwen")
    messages = [M("user", "q")]
    default = (
        "<|im_start|>system\n"
        "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
    )
    assert t.render_prompt(messages, system=None).startswith(default)
    assert t.render_prompt(messages, system="").startswith(default)
    assert t.render_prompt(messages, system="S").startswith("<|im_start|>system\nS<|im_end|>\n")


def test_fused_system_only_in_first_turn() -> None:
    turns = get_template("llama2").render(
        [M("user", "q1"), M("assistant", "a1"), M("user", "q2"), M("assistant", "a2")], system="S"
    )
    assert turns[0].prompt == "<s>[INST] <<SYS>>\nS\n<</SYS>>\n\nq1 [/INST]"
    assert turns[1].prompt == "<s>[INST] q2 [/INST]"


def test_efficient_eos_only_on_last_response() -> None:
    turns = get_template("glm4").render(
        [M("user", "q1"), M("assistant", "a1"), M("user", "q2"), M("assistant", "a2")]
    )
    assert [t.response for t in turns] == ["\na1", "\na2<|endoftext|>"]
    assert not get_template("glm4").render_prompt([M("user", "q1")]).endswith("<|endoftext|>")


def test_tools_slot_puts_the_tool_list_itself_in_the_system_turn() -> None:
    tools = '[{"name": "f", "description": "d", "parameters": {}}]'
    text = get_template("phi4_mini").render_prompt([M("user", "q")], system="S", tools=tools)
    assert text == f"<|system|>S<|tool|>{tools}<|/tool|><|end|><|user|>q<|end|><|assistant|>"
    with pytest.raises(DataError, match="tools are not valid JSON"):
        get_template("phi4_mini").render_prompt([M("user", "q")], tools="[{")


def test_function_content_wrapped_in_tool_call_words_keeps_its_text() -> None:
    call = '{"name": "f", "arguments": {"x": 1}}'
    messages = [M("user", "q"), M("function", f"Let me check.\n<tool_call>{call}</tool_call>")]
    (turn,) = get_template("qwen").render(messages)
    assert turn.response == (
        'Let me check.\n<tool_call>\n{"name": "f", "arguments": {"x": 1}}\n</tool_call><|im_end|>'
    )
    lfm2 = [M("user", "q"), M("function", f"<|tool_call_start|>{call}<|tool_call_end|>")]
    (turn,) = get_template("lfm2").render(lfm2)
    assert turn.response == "<|tool_call_start|>[f(x=1)]<|tool_call_end|><|im_end|>"


def test_empty_thought_can_be_the_closing_tag_alone() -> None:
    (turn,) = get_template("glm4_7").render([M("user", "q"), M("assistant", "a")])
    assert turn.prompt == "[gMASK]<sop><|user|>\nq<|assistant|>"
    assert turn.response == "</think>\na<|endoftext|>"
    off = get_template("glm4_7", enable_thinking=False)
    assert off.render_prompt([M("user", "q")]).endswith("<|assistant|></think>")


def test_thought_words_made_of_markers_are_not_one_token() -> None:
    tokens = get_template("gpt_oss").special_tokens
    assert "<|channel|>" in tokens and "<|channel|>analysis<|message|>" not in tokens
    assert {"<seed:think>", "</seed:think>"} <= set(get_template("seed_oss").special_tokens)
