"""Generate an HF-style jinja `chat_template` from a declarative `Template`.

What the generated template covers, rendering exactly what `Template.render` /
`Template.render_prompt` produce:

- `messages` with roles `system` (first message only), `user`, `assistant`, and `tool` (a tool
  result, rendered with the observation slot), any number of turns;
- the default system prompt when there is no system message (or it is empty);
- `add_generation_prompt` (the assistant header, plus the empty thought block for a reasoning
  template with thinking off);
- `bos_token` / `eos_token` variables (undefined or None render as "");
- reasoning templates: `enable_thinking` and `preserve_thinking` (undefined or None means the
  template default), thoughts stripped from history assistant turns (everything up to the last
  `</think>`) unless preserved, and from every turn when thinking is off, the empty thought block
  for assistant turns without one.

Not covered: `tools` (the tool prompt) and assistant `tool_calls`; render those through
`Template.render`. The template is written on one line of `{{ }}` / `{% %}` tags with every literal
inside an expression, so HF's `trim_blocks` / `lstrip_blocks` settings cannot change its output.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tuneforge.templates.base import Template

_PIECE_RE = re.compile(r"(\{content\}|\{bos_token\}|\{eos_token\})")


def _literal(text: str) -> str:
    # Jinja string literals decode backslash escapes like Python's; JSON escaping is a subset.
    return json.dumps(text, ensure_ascii=False)


def _pieces(slot: str, var: str) -> list[str]:
    """Jinja expressions for the parts of a slot, in order."""
    names = {
        "{content}": var,
        "{bos_token}": "(bos_token or '')",
        "{eos_token}": "(eos_token or '')",
    }
    return [names.get(part) or _literal(part) for part in _PIECE_RE.split(slot) if part]


def _emit(slot: str, var: str = "content") -> str:
    """Output statements for a slot."""
    return "".join("{{ " + piece + " }}" for piece in _pieces(slot, var))


def _expr(slot: str, var: str) -> str:
    """One string expression for a slot."""
    return " ~ ".join(_pieces(slot, var)) or "''"


def _head(t: Template) -> str:
    """Pick the system message and the default, set `thinking`, emit prefix and system turn."""
    out = (
        "{% if messages and messages[0]['role'] == 'system' %}"
        "{% set system_message = messages[0]['content'] %}{% set loop_messages = messages[1:] %}"
        "{% else %}{% set system_message = '' %}{% set loop_messages = messages %}{% endif %}"
    )
    if t.default_system:
        out += (
            "{% if not system_message %}{% set system_message = "
            + _literal(t.default_system)
            + " %}{% endif %}"
        )
    if t.reasoning:
        default = "true" if t.enable_thinking else "false"
        keep = "true" if t.preserve_thinking else "false"
        out += (
            "{% if enable_thinking is defined and enable_thinking is not none %}"
            "{% set thinking = enable_thinking %}{% else %}{% set thinking = "
            + default
            + " %}{% endif %}"
            "{% if preserve_thinking is defined and preserve_thinking is not none %}"
            "{% set preserve = preserve_thinking %}{% else %}{% set preserve = "
            + keep
            + " %}{% endif %}"
        )
    out += _emit(t.prefix)
    if t.system_in_user:
        out += (
            "{% if system_message %}{% set system_text = "
            + _expr(t.system, "system_message")
            + " %}"
            "{% else %}{% set system_text = '' %}{% endif %}"
        )
    else:
        out += "{% if system_message %}" + _emit(t.system, "system_message") + "{% endif %}"
    return out


def _prompt_turn(t: Template) -> str:
    out = "{% if message['role'] == 'user' or message['role'] == 'tool' %}"
    if t.separator:
        out += "{% if not loop.first %}" + _emit(t.separator) + "{% endif %}"
    if t.system_in_user:
        out += "{% if loop.first %}{% set content = system_text ~ content %}{% endif %}"
    out += "{% if message['role'] == 'user' %}" + _emit(t.user) + "{% else %}"
    return out + _emit(t.observation or t.user) + "{% endif %}"


def _response_turn(t: Template) -> str:
    out = "{% elif message['role'] == 'assistant' %}" + _emit(t.assistant_header)
    if t.reasoning:
        open_tag, close_tag = (_literal(w.strip()) for w in t.thought_words)
        out += (
            "{% if (not thinking or (not loop.last and not preserve)) and "
            + close_tag
            + " in content %}"
            "{% set content = content.split("
            + close_tag
            + ")[-1].lstrip("
            + _literal("\n")
            + ") %}"
            "{% endif %}"
            "{% if " + open_tag + " not in content and " + close_tag + " not in content %}"
            "{{ " + _literal(t.empty_thought) + " }}{% endif %}"
        )
    out += _emit(t.assistant)
    if t.efficient_eos:
        out += "{% if loop.last %}{{ eos_token or '' }}{% endif %}"
    return out + "{% endif %}"


def build_chat_template(t: Template) -> str:
    """Build the jinja chat template equivalent to `t.render` / `t.render_prompt`.

    Args:
        t: A declarative template.

    Returns:
        The jinja source, for `tokenizer.chat_template`.
    """
    generation = _emit(t.assistant_header)
    if t.reasoning:
        generation += "{% if not thinking %}{{ " + _literal(t.empty_thought) + " }}{% endif %}"
    return (
        _head(t)
        + "{% for message in loop_messages %}{% set content = message['content'] %}"
        + _prompt_turn(t)
        + _response_turn(t)
        + "{% endfor %}"
        + "{% if add_generation_prompt %}"
        + generation
        + "{% endif %}"
    )
