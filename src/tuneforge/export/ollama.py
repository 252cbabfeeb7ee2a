"""An Ollama Modelfile for an exported model: `ollama create NAME -f EXPORT_DIR/Modelfile`.

The TEMPLATE is our template's slots in Ollama's Go-template syntax, so that Ollama renders a
conversation as `Template.render_prompt` does. Ollama's variables: `.System` (every system
message, or the Modelfile's SYSTEM when the request has none), `.Messages` (each with `.Role`:
system, user, assistant or tool, and `.Content`). System messages are skipped in the loop
because `.System` already carries them. Tool schemas (`.Tools`) and assistant tool calls are
not rendered. `{bos_token}` / `{eos_token}` become the tokenizer's literal tokens, as in the
tokenizer's jinja chat_template.

`template: auto` has no slots to translate: the Modelfile then has no TEMPLATE, and says so.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

logger = logging.getLogger("tuneforge")

_PLACEHOLDER_RE = re.compile(r"(\{content\}|\{bos_token\}|\{eos_token\})")


def build_modelfile(template: Any) -> str:
    """The Modelfile text for a model exported with `template` (bound to its tokenizer).

    Args:
        template: A `Template` (or an `AutoTemplate`, which gets no TEMPLATE line).

    Returns:
        The Modelfile: FROM ., TEMPLATE, SYSTEM (the default system prompt, if any) and one
        `PARAMETER stop` line per stop word.
    """
    lines = ["# Ollama Modelfile written by tuneforge export", "", "FROM ."]
    if hasattr(template, "assistant_header"):
        lines += ["", f'TEMPLATE """{go_template(template)}"""']
    else:
        lines += [
            "",
            f"# No TEMPLATE: `template: {template.name}` renders with the tokenizer's own "
            "chat_template; add a TEMPLATE line in Ollama's syntax if Ollama does not pick one.",
        ]
    if template.default_system:
        if '"""' in template.default_system:
            logger.warning('The default system prompt holds \'"""\'; the Modelfile omits it.')
        else:
            lines += ["", f'SYSTEM """{template.default_system}"""']
    lines.append("")
    lines += [
        f"PARAMETER stop {json.dumps(word, ensure_ascii=False)}" for word in template.stop_words
    ]
    return "\n".join(lines) + "\n"


def go_template(template: Any) -> str:
    """The template's slots as one Ollama (Go text/template) template, without whitespace
    between actions, so that it renders exactly the slots' text."""
    header = _go(template, template.assistant_header)
    thought = _literal(template.empty_thought) if template.reasoning else ""
    last = "{{ if eq (len (slice $.Messages $i)) 1 }}"  # the last message: generation follows
    generation = header + (thought if template.reasoning and not template.enable_thinking else "")
    separator = _go(template, template.separator)
    # the separator follows a response and opens the next prompt turn
    prompt_start = "{{ if $replied }}" + separator + "{{ $replied = false }}{{ end }}"
    prompt_start = prompt_start if separator else ""
    user = _prompt_slot(template, template.user)
    tool = _prompt_slot(template, template.observation or template.user)
    set_first = "{{ $first = false }}" if template.system_in_user else ""
    assistant = header + thought + _go(template, template.assistant, "{{ .Content }}")
    return (
        _go(template, template.prefix)
        + ("{{ $first := true }}" if template.system_in_user else "")
        + ("{{ $replied := false }}" if separator else "")
        + _system_turn(template)
        + "{{ range $i, $m := .Messages }}"
        + '{{ if eq .Role "user" }}'
        + prompt_start
        + user
        + set_first
        + f"{last}{generation}{{{{ end }}}}"
        + '{{ else if eq .Role "tool" }}'
        + prompt_start
        + tool
        + set_first
        + f"{last}{generation}{{{{ end }}}}"
        + '{{ else if eq .Role "assistant" }}'
        + assistant
        + ("{{ $replied = true }}" if separator else "")
        + "{{ end }}{{ end }}"
    )


def _system_turn(template: Any) -> str:
    if template.system_in_user:
        return ""  # fused into the first prompt turn (see _prompt_slot)
    return "{{ if .System }}" + _go(template, template.system, "{{ .System }}") + "{{ end }}"


def _prompt_slot(template: Any, slot: str) -> str:
    content = "{{ .Content }}"
    if template.system_in_user:
        system = _go(template, template.system, "{{ $.System }}")
        content = "{{ if and $first $.System }}" + system + "{{ end }}" + content
    return _go(template, slot, content)


def _go(template: Any, slot: str, content: str = "") -> str:
    """A slot in Go-template text: placeholders resolved, literal `{{` escaped."""
    pieces = []
    for piece in _PLACEHOLDER_RE.split(slot):
        if piece == "{content}":
            pieces.append(content)
        elif piece == "{bos_token}":
            pieces.append(_literal(template.bos_token or ""))
        elif piece == "{eos_token}":
            pieces.append(_literal(template.eos_token or ""))
        else:
            pieces.append(_literal(piece))
    return "".join(pieces)


def _literal(text: str) -> str:
    # "{{" would open an action in Go templates: print it as a string instead
    return text.replace("{{", '{{ "{{" }}')
