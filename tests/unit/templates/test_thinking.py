"""Reasoning templates: thought stripping, the empty thought block, and enable_thinking."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from tuneforge.data.example import Message
from tuneforge.templates import get_template

M = Message
EMPTY = "<think>\n\n</think>\n\n"
HEADER = "<|im_start|>assistant\n"
THOUGHT = "<think>\nTwo plus two.\n</think>\n\n"


def qwen3(**kwargs):
    return get_template("qwen3", **kwargs)


def test_thinking_on_without_thought_trains_empty_block() -> None:
    (turn,) = qwen3().render([M("user", "2+2?"), M("assistant", "4")], enable_thinking=True)
    assert turn.prompt.endswith(HEADER)
    assert turn.response == EMPTY + "4<|im_end|>"


def test_thinking_on_keeps_the_thought() -> None:
    (turn,) = qwen3().render(
        [M("user", "2+2?"), M("assistant", THOUGHT + "4")], enable_thinking=True
    )
    assert turn.prompt.endswith(HEADER)
    assert turn.response == THOUGHT + "4<|im_end|>"


@pytest.mark.parametrize("content", [THOUGHT + "4", "4"])
def test_thinking_off_strips_thought_and_puts_empty_block_in_prompt(content: str) -> None:
    (turn,) = qwen3().render([M("user", "2+2?"), M("assistant", content)], enable_thinking=False)
    assert turn.prompt.endswith(HEADER + EMPTY)
    assert turn.response == "4<|im_end|>"


def test_history_thoughts_are_stripped() -> None:
    messages = [
        M("user", "2+2?"),
        M("assistant", THOUGHT + "4"),
        M("user", "3+3?"),
        M("assistant", "<think>\nThree plus three.\n</think>\n\n6"),
    ]
    first, last = qwen3().render(messages, enable_thinking=True)
    assert first.response == EMPTY + "4<|im_end|>"  # history: stripped, then the empty block
    assert last.response == "<think>\nThree plus three.\n</think>\n\n6<|im_end|>"
    assert "Two plus two" not in qwen3().render_prompt(messages[:3])


def test_strip_handles_compact_thoughts() -> None:
    t = qwen3()
    assert t.strip_thought("<think>a</think>b") == "b"
    assert t.strip_thought("<think>\nx\n</think>\n\n<think>y</think>\nz") == "z"
    assert t.strip_thought("no thought") == "no thought"


@pytest.mark.parametrize(("thinking", "tail"), [(True, HEADER), (False, HEADER + EMPTY)])
def test_generation_prompt(thinking: bool, tail: str) -> None:
    prompt = qwen3().render_prompt([M("user", "2+2?")], enable_thinking=thinking)
    assert prompt == "<|im_start|>user\n2+2?<|im_end|>\n" + tail


def test_template_default_and_override() -> None:
    messages = [M("user", "2+2?"), M("assistant", "4")]
    assert qwen3().render(messages)[0].response.startswith(EMPTY)  # default: thinking on
    off = qwen3(enable_thinking=False)
    assert off.render(messages)[0].response == "4<|im_end|>"
    assert off.render_prompt(messages[:1]).endswith(EMPTY)


@pytest.mark.parametrize("thinking", [True, False])
def test_prompt_of_each_turn_is_render_prompt_of_history(thinking: bool) -> None:
    messages = [
        M("user", "a"),
        M("assistant", THOUGHT + "b"),
        M("user", "c"),
        M("function", THOUGHT + '{"name": "f", "arguments": {"x": 1}}'),
        M("observation", "d"),
        M("assistant", THOUGHT + "e"),
    ]
    t = qwen3()
    turns = t.render(messages, enable_thinking=thinking)
    done = ""
    for k, turn in enumerate(turns):
        assert done + turn.prompt == t.render_prompt(
            messages[: 2 * k + 1], enable_thinking=thinking
        )
        done += turn.prompt + turn.response


def test_function_call_keeps_its_thought_in_the_last_turn() -> None:
    messages = [M("user", "weather?"), M("function", THOUGHT + '{"name": "get", "arguments": {}}')]
    (turn,) = qwen3().render(messages, enable_thinking=True)
    assert (
        turn.response
        == THOUGHT + '<tool_call>\n{"name": "get", "arguments": {}}\n</tool_call><|im_end|>'
    )


def test_nothink_renders_content_verbatim() -> None:
    (turn,) = get_template("qwen3_nothink").render([M("user", "q"), M("assistant", THOUGHT + "4")])
    assert turn.response == THOUGHT + "4<|im_end|>"
    assert get_template("qwen3_nothink").render_prompt([M("user", "q")]).endswith(HEADER)


def test_deepseekr1() -> None:
    t = get_template("deepseekr1")
    (turn,) = t.render([M("user", "q"), M("assistant", "a")], enable_thinking=False)
    assert turn.prompt == "<｜begin▁of▁sentence｜><｜User｜>q<｜Assistant｜>" + EMPTY
    assert turn.response == "a<｜end▁of▁sentence｜>"


# ---- preserve_thinking -----------------------------------------------------------------------

HISTORY = [
    M("user", "2+2?"),
    M("assistant", THOUGHT + "4"),
    M("user", "3+3?"),
    M("assistant", "<think>\nThree plus three.\n</think>\n\n6"),
]


def test_preserve_thinking_keeps_history_thoughts() -> None:
    first, last = qwen3(preserve_thinking=True).render(HISTORY)
    assert first.response == THOUGHT + "4<|im_end|>"  # kept, and no empty block added
    assert last.response.startswith("<think>\nThree plus three.")
    prompt = qwen3(preserve_thinking=True).render_prompt(HISTORY[:3])
    assert THOUGHT + "4<|im_end|>" in prompt
    assert prompt == first.prompt + first.response + last.prompt  # still each turn's prompt


def test_preserve_thinking_does_not_keep_thoughts_when_thinking_is_off() -> None:
    preserved = qwen3(preserve_thinking=True, enable_thinking=False).render(HISTORY)
    assert preserved == qwen3(enable_thinking=False).render(HISTORY)
    assert "Two plus two" not in "".join(t.prompt + t.response for t in preserved)


def test_preserve_thinking_config_key_reaches_the_encoding() -> None:
    from tuneforge.config.loader import build_config
    from tuneforge.data.encode import EncodeOptions, encode_batch
    from tuneforge.data.example import Example
    from tuneforge.templates import template_for

    tok = SimpleNamespace(bos_token=None, eos_token="<|endoftext|>")
    texts: dict[bool, str] = {}
    for preserve in (False, True):
        config = build_config({"template": "qwen3", "preserve_thinking": preserve})
        assert config.data.preserve_thinking is preserve
        template = template_for(config.data, tok)
        pieces: list[str] = []

        def tokenize(batch: list[str], out: list[str] = pieces) -> list[list[int]]:
            out.extend(batch)
            return [[len(text)] for text in batch]

        columns, _ = encode_batch(
            [Example(tuple(HISTORY))],
            "supervised",
            template,
            tokenize,  # type: ignore[arg-type]
            EncodeOptions(cutoff_len=4096),
        )
        assert columns["input_ids"]
        texts[preserve] = "".join(pieces)
    assert "Two plus two" in texts[True] and "Two plus two" not in texts[False]
