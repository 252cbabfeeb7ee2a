"""OpenAI tools and tool calls <-> the template's tool format.

The engine sees tools as a JSON list of function schemas and a tool-calling assistant turn as a
`function` message whose content is `[{"name": ..., "arguments": {...}}]`; the template's tool
format renders both and parses the model's output back into calls. OpenAI carries the arguments
as a JSON string: they are decoded on the way in and encoded on the way out.

`tool_choice`: "auto" (the default when tools are given) shows the tools and parses calls;
"none" hides them, so the model answers in text. "required" and a named function would need
the reply forced into a call, which plain generation cannot promise: they are refused.

Streaming with tools (`ToolCallStream`): a reply's text is sent as it comes, except from where
a tool call may begin, which waits for the end of the reply: each format's `CALL_STARTS` says
where that is (an opening marker such as Qwen's `<tool_call>` anywhere in the reply; the first
character for formats whose whole reply is the call, such as llama3's JSON). The text before a
call has been sent as content by then; the call itself goes out as `tool_calls`.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

from tuneforge.serving.protocol import (
    ApiError,
    ChatCompletionRequest,
    FunctionCallOut,
    NamedToolChoice,
    ToolCallIn,
    ToolCallOut,
)
from tuneforge.templates.tools import ToolFormat


def _dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False)


def tools_for_prompt(request: ChatCompletionRequest) -> str | None:
    """The tools to show the model as the engine's JSON text, or None for no tools.

    Args:
        request: The chat request; its `tools` and `tool_choice` decide.

    Returns:
        A JSON list of bare function schemas (`name`, `description`, `parameters`: the shape of
        the training data's `tools` column), or None when there are no tools or
        `tool_choice` is "none".

    Raises:
        ApiError: `tool_choice` asks for a forced call, or tool names repeat.
    """
    choice = request.tool_choice or "auto"
    if choice not in ("auto", "none"):
        wanted = (
            f"the function {choice.function.name!r}"
            if isinstance(choice, NamedToolChoice)
            else "required"
        )
        raise ApiError(
            400,
            f"tool_choice {wanted} is not supported: this server cannot force the model to call a "
            'tool. Use tool_choice "auto" (the model decides) or "none".',
            "tool_choice",
            "unsupported",
        )
    if not request.tools or choice == "none":
        return None
    names = [tool.function.name for tool in request.tools]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ApiError(400, f"tool names must be unique; repeated: {repeated}", "tools")
    schemas = [
        tool.function.model_dump(include={"name", "description", "parameters"}, exclude_none=True)
        for tool in request.tools
    ]
    return _dumps(schemas)


def function_message(tool_calls: list[ToolCallIn], param: str) -> str:
    """The content of the engine's `function` message for an assistant turn's tool calls.

    Args:
        tool_calls: The assistant message's `tool_calls`.
        param: Where they sit in the request (`messages[3].tool_calls`), for errors.

    Returns:
        `[{"name": ..., "arguments": {...}}, ...]` as JSON text.

    Raises:
        ApiError: some call's arguments are not a JSON object.
    """
    calls = []
    for index, call in enumerate(tool_calls):
        where = f"{param}[{index}].function.arguments"
        try:
            arguments = json.loads(call.function.arguments or "{}")
        except json.JSONDecodeError as err:
            raw = call.function.arguments[:200]
            raise ApiError(400, f"{where} is not valid JSON ({err.msg}): {raw!r}", where) from None
        if not isinstance(arguments, dict):
            raise ApiError(400, f"{where} must be a JSON object, got {arguments!r:.200}", where)
        calls.append({"name": call.function.name, "arguments": arguments})
    return _dumps(calls)


def parse_tool_calls(tool_format: ToolFormat, text: str) -> list[ToolCallOut] | None:
    """The tool calls in a reply, in OpenAI's shape, or None when it holds none.

    Args:
        tool_format: The template's tool format (it knows the call syntax).
        text: The generated reply.

    Returns:
        One `ToolCallOut` per call, each with a fresh `call_...` id, or None.
    """
    calls = tool_format.parse_calls(text)
    if not calls:
        return None
    return [
        ToolCallOut(
            id=f"call_{uuid.uuid4().hex[:24]}",
            function=FunctionCallOut(name=call["name"], arguments=_dumps(call["arguments"])),
        )
        for call in calls
    ]


@dataclass(frozen=True)
class CallStart:
    """Where a tool format's calls can begin in a reply.

    Attributes:
        markers: Texts that open a call anywhere in the reply.
        leading: Texts that open a call only as the reply's first non-blank text (the whole
            reply is then the call).
        name_line: The whole reply is the call: a first line that is the tool's name, then
            its JSON arguments (GLM-4).
        whole: Nothing is known: the whole reply waits for its end.
    """

    markers: tuple[str, ...] = ()
    leading: tuple[str, ...] = ()
    name_line: bool = False
    whole: bool = False

    def releasable(self, text: str) -> int:
        """How many leading characters of a partial reply cannot belong to a tool call."""
        if self.whole:
            return 0
        if self.leading:
            head = text.lstrip()
            if not head or any(m.startswith(head) or head.startswith(m) for m in self.leading):
                return 0
        if self.name_line:
            name, newline, rest = text.partition("\n")
            if name and name == name.strip():
                rest = rest.lstrip()
                if not newline or not rest or rest.startswith("{"):
                    return 0
        found = [index for marker in self.markers if (index := text.find(marker)) >= 0]
        if found:
            return min(found)
        held = 0  # a tail that may still grow into a marker
        for marker in self.markers:
            for size in range(min(len(marker) - 1, len(text)), held, -1):
                if text.endswith(marker[:size]):
                    held = size
                    break
        return len(text) - held


_QWEN_STYLE = CallStart(markers=("<tool_call>",))
CALL_STARTS: dict[str, CallStart] = {
    "default": CallStart(markers=("Action:",)),
    "qwen": _QWEN_STYLE,
    "ling": _QWEN_STYLE,
    "qwen3_5": _QWEN_STYLE,
    "glm4_moe": _QWEN_STYLE,
    "llama3": CallStart(leading=("{", "[")),
    "mistral": CallStart(leading=("[TOOL_CALLS]", "[", "{")),
    "glm4": CallStart(name_line=True),
    "gemma4": CallStart(markers=("<|tool_call>",)),
    "lfm2": CallStart(markers=("<|tool_call_start|>",)),
    "minimax1": CallStart(markers=("<tool_calls>",)),
    "minimax2": CallStart(markers=("<minimax:tool_call>", '<invoke name="')),
    "seed_oss": CallStart(markers=("<seed:tool_call>",)),
}
"""Each tool format's CallStart (templates/tools.py: TOOL_FORMATS), by format name."""


class ToolCallStream:
    """One streamed reply with tools shown to the model: `add` returns the text that can go
    out as content now; `finish` returns the rest, as content or as tool calls."""

    def __init__(self, tool_format: ToolFormat) -> None:
        self.tool_format = tool_format
        self.start = CALL_STARTS.get(tool_format.name, CallStart(whole=True))
        self.text = ""
        self.sent = 0

    def add(self, piece: str) -> str:
        """Takes the next piece of the reply; returns the content to send now ("" for none)."""
        self.text += piece
        end = max(self.sent, self.start.releasable(self.text))
        content, self.sent = self.text[self.sent : end], end
        return content

    def finish(self) -> tuple[str, list[ToolCallOut] | None]:
        """The reply is complete: its tool calls, or else the content still held back."""
        calls = parse_tool_calls(self.tool_format, self.text)
        if calls:
            return "", calls
        rest, self.sent = self.text[self.sent :], len(self.text)
        return rest, None
