"""The generated jinja chat_template renders exactly what render / render_prompt produce."""

from __future__ import annotations

from typing import Any

import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment

from tuneforge.data.example import Message
from tuneforge.templates import TEMPLATES, Template

from .cases import golden_template

M = Message
_ENV = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)

CONVERSATIONS: dict[str, tuple[str | None, list[Message]]] = {
    "single_turn": (None, [M("user", "Hi there"), M("assistant", "Hello!")]),
    "multi_turn_system": (
        "You are terse.",
        [M("user", "2+2?"), M("assistant", "4"), M("user", "3+3?"), M("assistant", "6")],
    ),
    "default_system": (
        None,
        [M("user", "2+2?"), M("assistant", "4"), M("user", "3+3?"), M("assistant", "6")],
    ),
    "observation": (
        "Sys",
        [
            M("user", "Look it up"),
            M("assistant", "Looking."),
            M("observation", '{"x": 1}'),
            M("assistant", "x is 1"),
        ],
    ),
    "quotes_and_braces": (
        "Say 'hi' {content} \"ok\" \\n",
        [M("user", "{{ not jinja }} {% raw %}"), M("assistant", "{eos_token} é 😀")],
    ),
}


def _hf_messages(system: str | None, messages: list[Message]) -> list[dict[str, str]]:
    roles = {"observation": "tool"}
    out = [{"role": "system", "content": system}] if system else []
    return out + [{"role": roles.get(m.role, m.role), "content": m.content} for m in messages]


def _jinja(template: Template, messages: list[dict[str, str]], **kwargs: Any) -> str:
    return _ENV.from_string(template.chat_template).render(
        messages=messages, bos_token=template.bos_token, eos_token=template.eos_token, **kwargs
    )


@pytest.mark.parametrize("conv", sorted(CONVERSATIONS))
@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_jinja_matches_render(name: str, conv: str) -> None:
    template = golden_template(name)
    system, messages = CONVERSATIONS[conv]
    expected = "".join(t.prompt + t.response for t in template.render(messages, system=system))
    assert _jinja(template, _hf_messages(system, messages)) == expected


@pytest.mark.parametrize("conv", sorted(CONVERSATIONS))
@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_jinja_generation_prompt(name: str, conv: str) -> None:
    template = golden_template(name)
    system, messages = CONVERSATIONS[conv]
    expected = template.render_prompt(messages[:-1], system=system)
    assert (
        _jinja(template, _hf_messages(system, messages[:-1]), add_generation_prompt=True)
        == expected
    )


THOUGHTFUL = [
    M("user", "2+2?"),
    M("assistant", "<think>\nadd them\n</think>\n\n4"),
    M("user", "3+3?"),
    M("assistant", "<think>\nagain\n</think>\n\n6"),
]


@pytest.mark.parametrize("thinking", [True, False, None])
@pytest.mark.parametrize("name", ["qwen3", "deepseekr1"])
def test_jinja_thinking(name: str, thinking: bool | None) -> None:
    template = golden_template(name)
    kwargs = {} if thinking is None else {"enable_thinking": thinking}
    expected = "".join(
        t.prompt + t.response for t in template.render(THOUGHTFUL, enable_thinking=thinking)
    )
    assert _jinja(template, _hf_messages(None, THOUGHTFUL), **kwargs) == expected
    prompt = template.render_prompt(THOUGHTFUL[:3], enable_thinking=thinking)
    assert (
        _jinja(template, _hf_messages(None, THOUGHTFUL[:3]), add_generation_prompt=True, **kwargs)
        == prompt
    )


def test_jinja_without_special_token_variables() -> None:
    # HF leaves bos_token undefined for tokenizers without one: it must render as "".
    template = golden_template("llama3")
    text = _ENV.from_string(template.chat_template).render(
        messages=[{"role": "user", "content": "Hi"}]
    )
    assert text.startswith("<|start_header_id|>user")
