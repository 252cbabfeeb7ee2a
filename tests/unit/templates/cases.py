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
