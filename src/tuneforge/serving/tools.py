"""OpenAI tools and tool calls <-> the template's tool format.

The engine sees tools as a JSON list of function schemas and a tool-calling assistant turn as a
`function` message whose content is `[{"name": ..., "arguments": {...}}]`; the template's tool
format renders both and parses the model's output back into calls. OpenAI carries the arguments
as a JSON string: they are decoded on the way in and encoded on the way out.

`tool_choice`: "auto" (the default when tools are given) shows the tools and parses calls;
"none" hides them, so the model answers in text. "required" and a named function would need
the reply forced into a call, which plain generation cannot promise: they are refused.
"""

from __future__ import annotations

import json
import uuid
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
