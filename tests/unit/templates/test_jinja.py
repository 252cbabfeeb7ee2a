"""The generated jinja chat_template renders exactly what render / render_prompt produce."""

from __future__ import annotations

from dataclasses import replace
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


def thoughtful(template: Template) -> list[Message]:
    """Two turns with thoughts in the template's own thought words, a third without."""
    open_tag, close_tag = template.thought_words
    return [
        M("user", "2+2?"),
        M("assistant", f"{open_tag}add them{close_tag}4"),
        M("user", "3+3?"),
        M("assistant", "6"),
        M("user", "4+4?"),
        M("assistant", f"{open_tag}again{close_tag}8"),
    ]


REASONING = sorted(name for name, t in TEMPLATES.items() if t.reasoning)


@pytest.mark.parametrize("preserve", [False, True, None])
@pytest.mark.parametrize("thinking", [True, False, None])
@pytest.mark.parametrize("name", REASONING)
def test_jinja_thinking(name: str, thinking: bool | None, preserve: bool | None) -> None:
    template = golden_template(name)
    messages = thoughtful(template)
    kwargs = {} if thinking is None else {"enable_thinking": thinking}
    if preserve is not None:
        kwargs["preserve_thinking"] = preserve
        template = replace(template, preserve_thinking=preserve)
    expected = "".join(
        t.prompt + t.response for t in template.render(messages, enable_thinking=thinking)
    )
    assert _jinja(template, _hf_messages(None, messages), **kwargs) == expected
    prompt = template.render_prompt(messages[:5], enable_thinking=thinking)
    assert (
        _jinja(template, _hf_messages(None, messages[:5]), add_generation_prompt=True, **kwargs)
        == prompt
    )


@pytest.mark.parametrize("name", ["qwen3", "glm4_7"])
def test_jinja_preserve_thinking_default_is_the_templates(name: str) -> None:
    template = replace(golden_template(name), preserve_thinking=True)
    messages = thoughtful(template)
    expected = "".join(t.prompt + t.response for t in template.render(messages))
    assert "add them" in expected
    assert _jinja(template, _hf_messages(None, messages)) == expected


def test_jinja_without_special_token_variables() -> None:
    # HF leaves bos_token undefined for tokenizers without one: it must render as "".
    template = golden_template("llama3")
    text = _ENV.from_string(template.chat_template).render(
        messages=[{"role": "user", "content": "Hi"}]
    )
    assert text.startswith("<|start_header_id|>user")
