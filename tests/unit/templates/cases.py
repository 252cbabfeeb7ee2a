"""Conversations shared by the golden, parity and jinja tests, and the golden-file format.

Golden files hold the exact rendering of a case with every trained span (`TurnText.response`)
wrapped in ⟦ ⟧. Templates that name no bos/eos of their own (generic ones such as `default`,
`alpaca`, `vicuna`) render their goldens with `<s>` / `</s>`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

from tuneforge.data.example import Message
from tuneforge.templates import TEMPLATES, Template, TurnText, get_template

GOLDEN_DIR = Path(__file__).parent / "golden"
OPEN, CLOSE = "⟦", "⟧"
GENERIC_BOS, GENERIC_EOS = "<s>", "</s>"

WEATHER_TOOLS = json.dumps(
    [
        {
            "name": "get_weather",
            "description": "Get the current weather for a city.",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string", "description": "City name"},
                    "unit": {
                        "type": "string",
                        "description": "Unit",
                        "enum": ["celsius", "fahrenheit"],
                    },
                },
                "required": ["city"],
            },
        }
    ]
)


@dataclass(frozen=True)
class Case:
    """A conversation to render."""

    messages: tuple[Message, ...]
    system: str | None = None
    tools: str = ""


M = Message
CASES: dict[str, Case] = {
    "multiturn": Case(
        (
            M("user", "What is 2+2?"),
            M("assistant", "4"),
            M("user", "And 3+3?"),
            M("assistant", "6"),
        ),
        system="You are a terse assistant.",
    ),
    "tools": Case(
        (
            M("user", "What's the weather in Paris?"),
            M("function", '{"name": "get_weather", "arguments": {"city": "Paris"}}'),
            M("observation", '{"temperature": 18, "condition": "sunny"}'),
            M("assistant", "It is sunny and 18 °C in Paris."),
        ),
        system="You can look up the weather.",
        tools=WEATHER_TOOLS,
    ),
}


# ---- conversations for the LLaMA-Factory goldens (golden_lf/, regen_lf.py, test_lf_parity.py) ----

THINK_OPEN, THINK_CLOSE = "⟨think⟩", "⟨/think⟩"
"""Placeholders for a template's own thought words (`thought_words`) in `LF_THOUGHT_CASES`."""
CALL_OPEN, CALL_CLOSE = "⟨call⟩", "⟨/call⟩"
"""Placeholders for a template's own tool-call words (`tool_call_words`)."""

_CALL = '{"name": "get_weather", "arguments": {"city": "Paris"}}'
_RESULT = '{"temperature": 18, "condition": "sunny"}'
_TWO_CALLS = (
    '[{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}, '
    '{"name": "get_weather", "arguments": {"city": "Rome"}}]'
)

LF_CASES: dict[str, Case] = {
    "single": Case((M("user", "Hi there!"), M("assistant", "Hello! How can I help you today?"))),
    "multiturn": CASES["multiturn"],
    "tools": CASES["tools"],
    "tools_no_system": Case(
        (
            M("user", "What's the weather in Paris?"),
            M("function", _CALL),
            M("observation", _RESULT),
            M("assistant", "Sunny, 18 °C."),
        ),
        tools=WEATHER_TOOLS,
    ),
    "parallel_calls": Case(
        (
            M("user", "Weather in Paris and in Rome?"),
            M("function", _TWO_CALLS),
            M("observation", '[{"temperature": 18}, {"temperature": 24}]'),
            M("assistant", "Paris 18 °C, Rome 24 °C."),
        ),
        system="Use the tools.",
        tools=WEATHER_TOOLS,
    ),
    "wrapped_call": Case(
        (
            M("user", "What's the weather in Paris?"),
            M("function", f"Let me look that up.\n{CALL_OPEN}{_CALL}{CALL_CLOSE}"),
            M("observation", _RESULT),
            M("assistant", "Sunny."),
        ),
        system="You can look up the weather.",
        tools=WEATHER_TOOLS,
    ),
}
"""Rendered with every template."""

LF_THOUGHT_CASES: dict[str, Case] = {
    "thoughts": Case(
        (
            M("user", "What is 2+2?"),
            M("assistant", f"{THINK_OPEN}Two plus two is four.{THINK_CLOSE}4"),
            M("user", "And 3+3?"),
            M("assistant", f"{THINK_OPEN}Three plus three is six.{THINK_CLOSE}6"),
        ),
        system="You are a terse assistant.",
    ),
    "mixed_thoughts": Case(
        (
            M("user", "What is 2+2?"),
            M("assistant", "4"),
            M("user", "And 3+3?"),
            M("assistant", f"{THINK_OPEN}Three plus three is six.{THINK_CLOSE}6"),
        ),
    ),
    "thought_call": Case(
        (
            M("user", "What's the weather in Paris?"),
            M("function", f"{THINK_OPEN}I should call the tool.{THINK_CLOSE}{_CALL}"),
            M("observation", _RESULT),
            M("assistant", f"{THINK_OPEN}It is sunny.{THINK_CLOSE}Sunny, 18 °C."),
        ),
        system="You can look up the weather.",
        tools=WEATHER_TOOLS,
    ),
}
"""Rendered with reasoning templates only, with thought blocks in the template's own words."""

LF_VARIANTS: dict[str, tuple[bool, bool]] = {
    "think": (True, False),
    "nothink": (False, False),
    "preserve": (True, True),
}
"""A reasoning template's renderings: name -> (enable_thinking, preserve_thinking)."""


def lf_records(name: str) -> list[dict]:
    """The conversations of one template's LLaMA-Factory golden, placeholders filled in.

    Each record: `case`, `variant` ("default", or one of `LF_VARIANTS`), `messages` (role and
    content dicts), `system`, `tools`, `enable_thinking`, `preserve_thinking`.
    """
    template = TEMPLATES[name]
    words = {
        THINK_OPEN: template.thought_words[0],
        THINK_CLOSE: template.thought_words[1],
        CALL_OPEN: template.tool_call_words[0],
        CALL_CLOSE: template.tool_call_words[1],
    }

    def fill(text: str) -> str:
        for placeholder, word in words.items():
            text = text.replace(placeholder, word)
        return text

    plain = {"think": LF_VARIANTS["think"], "nothink": LF_VARIANTS["nothink"]}
    variants = plain if template.reasoning else {"default": (True, False)}
    cases = [(key, case, variants) for key, case in LF_CASES.items()]
    if template.reasoning:  # preserve_thinking matters only where history turns have thoughts
        cases += [(key, case, LF_VARIANTS) for key, case in LF_THOUGHT_CASES.items()]
    return [
        {
            "case": case_name,
            "variant": variant,
            "messages": [{"role": m.role, "content": fill(m.content)} for m in case.messages],
            "system": case.system or "",
            "tools": case.tools,
            "enable_thinking": thinking,
            "preserve_thinking": preserve,
        }
        for case_name, case, case_variants in cases
        for variant, (thinking, preserve) in case_variants.items()
    ]


def golden_template(name: str) -> Template:
    """The template as goldens render it: its own tokens, `<s>`/`</s>` where it names none."""
    declared = TEMPLATES[name]
    if declared.bos_token is not None and declared.eos_token is not None:
        return get_template(name)  # type: ignore[return-value]
    stub = SimpleNamespace(
        bos_token=declared.bos_token if declared.bos_token is not None else GENERIC_BOS,
        eos_token=declared.eos_token if declared.eos_token is not None else GENERIC_EOS,
    )
    return get_template(name, stub)  # type: ignore[return-value]


def marked(turns: list[TurnText]) -> str:
    """The rendering with each trained span wrapped in ⟦ ⟧."""
    return "".join(f"{t.prompt}{OPEN}{t.response}{CLOSE}" for t in turns)


def render_case(name: str, case: Case) -> str:
    """The golden text of one template and case."""
    template = golden_template(name)
    return marked(template.render(list(case.messages), system=case.system, tools=case.tools))


def golden_path(name: str, case: str) -> Path:
    """Where the golden of a template and case lives."""
    return GOLDEN_DIR / f"{name}__{case}.txt"
