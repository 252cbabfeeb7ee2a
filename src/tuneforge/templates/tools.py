"""Tool-call formats: how a template shows tools to the model and how the model calls them.

A tool format does three things:

- `format_tools(tools_json)`: the tool list (a JSON list of schemas, bare
  `{"name", "description", "parameters"}` or OpenAI-style `{"type": "function", "function": {...}}`)
  becomes text that the template appends to the system prompt.
- `format_calls(calls_json)`: the content of a `function` message (one call
  `{"name": ..., "arguments": {...}}` or a list of them) becomes the text the model emits.
- `parse_calls(text)`: model output becomes a list of `{"name": str, "arguments": dict}`, or
  None when the text holds no call. `parse_calls(format_calls(x))` gives back the calls of `x`.

The prompt texts and call syntaxes are LLaMA-Factory's (`default`, `qwen`, `llama3`, `mistral`,
`glm4`), with one deliberate change: the `llama3` tool prompt leaves out the "Today Date" line, so
that a rendering never depends on the day it runs.
"""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass, field
from typing import Any

from tuneforge.errors import ConfigError, DataError

ToolCall = dict[str, Any]
"""One call: `{"name": str, "arguments": dict}`."""


def _dumps(obj: Any, indent: int | None = None) -> str:
    # LLaMA-Factory and HF's `tojson` both keep non-ASCII text and use ", " / ": " separators.
    return json.dumps(obj, ensure_ascii=False, indent=indent)


def _bare(tool: dict[str, Any]) -> dict[str, Any]:
    return tool["function"] if tool.get("type") == "function" else tool


def _wrapped(tool: dict[str, Any]) -> dict[str, Any]:
    return tool if tool.get("type") == "function" else {"type": "function", "function": tool}


def load_tools(tools_json: str) -> list[dict[str, Any]]:
    """Parse a JSON list of tool schemas, checking that every tool has a name.

    Args:
        tools_json: JSON text of a list of tools (a single tool object is accepted too).

    Returns:
        The tools as given (bare or OpenAI-style), in order.

    Raises:
        DataError: the text is not JSON, or an entry is not a tool schema with a name.
    """
    try:
        data = json.loads(tools_json)
    except json.JSONDecodeError as err:
        raise DataError(
            f"tools are not valid JSON ({err.msg} at line {err.lineno} column {err.colno}): "
            f"{tools_json[:200]!r}"
        ) from None
    tools = data if isinstance(data, list) else [data]
    for tool in tools:
        if not isinstance(tool, dict) or not isinstance(_bare(tool), dict):
            raise DataError(f"each tool must be a JSON object, got {tool!r:.200}")
        if not isinstance(_bare(tool).get("name"), str):
            raise DataError(f"tool has no 'name': {tool!r:.200}")
    return tools


def _load_call(item: Any, calls_json: str) -> ToolCall:
    if isinstance(item, dict) and isinstance(item.get("function"), dict):
        item = item["function"]  # OpenAI-style {"type": "function", "function": {...}}
    if not isinstance(item, dict) or "name" not in item or "arguments" not in item:
        raise DataError(
            "each tool call in a function message needs 'name' and 'arguments', got "
            f"{item!r:.200} in {calls_json[:200]!r}"
        )
    arguments = item["arguments"]
    if isinstance(arguments, str):  # OpenAI data stores the arguments as a JSON string
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError as err:
            raise DataError(
                f"tool call {item['name']!r} has arguments that are not valid JSON ({err.msg}): "
                f"{item['arguments'][:200]!r}"
            ) from None
    if not isinstance(arguments, dict):
        raise DataError(
            f"tool call {item['name']!r} needs a JSON object as arguments, got {arguments!r:.200}"
        )
    return {"name": str(item["name"]), "arguments": arguments}


def load_calls(calls_json: str) -> list[ToolCall]:
    """Parse the content of a `function` message into tool calls.

    Args:
        calls_json: `{"name": ..., "arguments": {...}}` or a JSON list of those. Arguments given
            as a JSON string (OpenAI style) are decoded.

    Returns:
        A non-empty list of `{"name": str, "arguments": dict}`.

    Raises:
        DataError: the content is not JSON, is empty, or a call lacks a name or arguments.
    """
    try:
        data = json.loads(calls_json)
    except json.JSONDecodeError as err:
        raise DataError(
            f"function message is not valid JSON ({err.msg} at line {err.lineno} column "
            f'{err.colno}); expected {{"name": ..., "arguments": {{...}}}} or a list of those, '
            f"got {calls_json[:200]!r}"
        ) from None
    items = data if isinstance(data, list) else [data]
    if not items:
        raise DataError("function message holds an empty list of tool calls")
    return [_load_call(item, calls_json) for item in items]


def _call_from_json(text: str, args_key: str) -> list[ToolCall] | None:
    """Decode `{"name", args_key}` or a list of them; None when the text is not such JSON."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return None
    items = data if isinstance(data, list) else [data]
    calls = []
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            return None
        arguments = item.get(args_key)
        if not isinstance(arguments, dict):
            return None
        calls.append({"name": item["name"], "arguments": arguments})
    return calls or None


@dataclass(frozen=True)
class ToolFormat:
    """Base of all tool formats; subclasses write the three texts.

    Attributes:
        name: The registry name (LLaMA-Factory's `tool_format`).
        special_tokens: Markers of this format that must be single tokens.
    """

    name: str
    special_tokens: tuple[str, ...] = field(default=())

    def format_tools(self, tools_json: str) -> str:
        """Render a JSON tool list as system-prompt text ("" for an empty list).

        Args:
            tools_json: JSON text of a list of tool schemas.

        Returns:
            The text the template appends to the system prompt.
        """
        tools = load_tools(tools_json)
        return self._tools_text(tools) if tools else ""

    def format_calls(self, calls_json: str) -> str:
        """Render a function message (JSON call or list of calls) as the text the model emits.

        Args:
            calls_json: The content of a `function` message.

        Returns:
            The tool-call text, without the template's end-of-turn marker.
        """
        return self._calls_text(load_calls(calls_json))

    def parse_calls(self, text: str) -> list[ToolCall] | None:
        """Extract tool calls from model output.

        Args:
            text: Generated text (special tokens may or may not have been decoded).

        Returns:
            `[{"name": str, "arguments": dict}, ...]`, or None when the text holds no call.
        """
        raise NotImplementedError

    def _tools_text(self, tools: list[dict[str, Any]]) -> str:
        raise NotImplementedError

    def _calls_text(self, calls: list[ToolCall]) -> str:
        raise NotImplementedError


_DEFAULT_ACTION_RE = re.compile(
    r"Action:\s*([\w.\-]+)\s*Action Input:\s*(.+?)(?=\s*Action:|\s*$)", re.DOTALL
)


def _default_param_line(name: str, param: dict[str, Any], required: list[str]) -> str:
    req = ", required" if name in required else ""
    enum = ""
    if param.get("enum"):
        enum = ", should be one of [{}]".format(", ".join(str(v) for v in param["enum"]))
    items = ""
    if param.get("items"):
        items = ", where each item should be {}".format(param["items"].get("type", ""))
    kind = param.get("type", "")
    return f"  - {name} ({kind}{req}): {param.get('description', '')}{enum}{items}\n"


class DefaultToolFormat(ToolFormat):
    """ReAct-style `Action:` / `Action Input:` lines (LLaMA-Factory's `default`)."""

    def _tools_text(self, tools: list[dict[str, Any]]) -> str:
        tool_text, names = "", []
        for tool in map(_bare, tools):
            params = tool.get("parameters") or {}
            required = params.get("required", [])
            args = "".join(
                _default_param_line(name, param, required)
                for name, param in params.get("properties", {}).items()
            )
            tool_text += (
                f"> Tool Name: {tool['name']}\nTool Description: {tool.get('description', '')}\n"
                f"Tool Args:\n{args}\n"
            )
            names.append(tool["name"])
        return (
            "You have access to the following tools:\n"
            + tool_text
            + "Use the following format if using a tool:\n```\n"
            + f"Action: tool name (one of [{', '.join(names)}])\n"
            + "Action Input: the input to the tool, in a JSON format representing the kwargs "
            + '(e.g. ```{"input": "hello world", "num_beams": 5}```)\n```\n'
        )

    def _calls_text(self, calls: list[ToolCall]) -> str:
        return "\n".join(
            f"Action: {call['name']}\nAction Input: {_dumps(call['arguments'])}" for call in calls
        )

    def parse_calls(self, text: str) -> list[ToolCall] | None:
        calls = []
        for name, raw in _DEFAULT_ACTION_RE.findall(text):
            try:
                arguments = json.loads(raw.strip().strip('"').strip("`"))
            except json.JSONDecodeError:
                return None
            if not isinstance(arguments, dict):
                return None
            calls.append({"name": name.strip(), "arguments": arguments})
        return calls or None


_QWEN_CALL_RE = re.compile(r"<tool_call>\s*(.+?)\s*</tool_call>", re.DOTALL)


class QwenToolFormat(ToolFormat):
    """`<tools>` JSON lines in the system prompt, `<tool_call>` JSON blocks (Qwen 2.5 / 3)."""

    def _tools_text(self, tools: list[dict[str, Any]]) -> str:
        tool_text = "".join("\n" + _dumps(_wrapped(tool)) for tool in tools)
        return (
            "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
            "You are provided with function signatures within <tools></tools> XML tags:\n<tools>"
            + tool_text
            + "\n</tools>\n\nFor each function call, return a json object with function name and "
            "arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n"
            '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>'
        )

    def _calls_text(self, calls: list[ToolCall]) -> str:
        return "\n".join(
            "<tool_call>\n"
            + _dumps({"name": c["name"], "arguments": c["arguments"]})
            + "\n</tool_call>"
            for c in calls
        )

    def parse_calls(self, text: str) -> list[ToolCall] | None:
        calls = []
        for block in _QWEN_CALL_RE.findall(text):
            found = _call_from_json(block, "arguments")
            if found is None or len(found) != 1:
                return None
            calls += found
        return calls or None


class Llama3ToolFormat(ToolFormat):
    """JSON `{"name", "parameters"}` calls, tools as indented JSON (Llama 3.x JSON tool calling)."""

    def _tools_text(self, tools: list[dict[str, Any]]) -> str:
        tool_text = "".join(_dumps(_wrapped(tool), indent=4) + "\n\n" for tool in tools)
        # LLaMA-Factory writes "Today Date: <now>" after the first line; left out: renderings
        # must not depend on the day they run.
        return (
            "Cutting Knowledge Date: December 2023\n\n"
            "You have access to the following functions. To call a function, please respond with "
            'JSON for a function call. Respond in the format {"name": function name, "parameters": '
            "dictionary of argument name and its value}. Do not use variables.\n\n" + tool_text
        )

    def _calls_text(self, calls: list[ToolCall]) -> str:
        objects = [{"name": c["name"], "parameters": c["arguments"]} for c in calls]
        return _dumps(objects[0] if len(objects) == 1 else objects)

    def parse_calls(self, text: str) -> list[ToolCall] | None:
        return _call_from_json(text.strip(), "parameters")


class MistralToolFormat(ToolFormat):
    """`[AVAILABLE_TOOLS]` JSON list, calls as a JSON list after `[TOOL_CALLS]` (Mistral v3)."""

    def _tools_text(self, tools: list[dict[str, Any]]) -> str:
        return (
            "[AVAILABLE_TOOLS] " + _dumps([_wrapped(tool) for tool in tools]) + "[/AVAILABLE_TOOLS]"
        )

    def _calls_text(self, calls: list[ToolCall]) -> str:
        return _dumps([{"name": c["name"], "arguments": c["arguments"]} for c in calls])

    def parse_calls(self, text: str) -> list[ToolCall] | None:
        text = text.strip()
        # [TOOL_CALLS] is a control token that decoding may or may not have kept.
        text = text.removeprefix("[TOOL_CALLS]").strip()
        return _call_from_json(text, "arguments")


_GLM4_PREAMBLE = (
    "你是一个名为 ChatGLM 的人工智能助手。"
    "你是基于智谱 AI 公司训练的语言模型 GLM-4 模型开发的，"
    "你的任务是针对用户的问题和要求提供适当的答复和支持。\n\n# 可用工具"
)
_GLM4_ARGS_NOTE = "在调用上述函数时，请使用 Json 格式表示调用的参数。"


class Glm4ToolFormat(ToolFormat):
    """GLM-4: Chinese tool preamble; a call is `name`, newline, arguments JSON; one per turn."""

    def _tools_text(self, tools: list[dict[str, Any]]) -> str:
        tool_text = "".join(
            f"\n\n## {tool['name']}\n\n{_dumps(tool, indent=4)}\n" + _GLM4_ARGS_NOTE
            for tool in map(_bare, tools)
        )
        return _GLM4_PREAMBLE + tool_text

    def _calls_text(self, calls: list[ToolCall]) -> str:
        if len(calls) > 1:
            raise DataError(
                f"the glm4 tool format takes one tool call per function message, got {len(calls)}: "
                "split them into separate function/observation turns"
            )
        return f"{calls[0]['name']}\n{_dumps(calls[0]['arguments'])}"

    def parse_calls(self, text: str) -> list[ToolCall] | None:
        name, sep, rest = text.partition("\n")
        if not sep or not name or name != name.strip():
            return None
        try:
            arguments = json.loads(rest.strip())
        except json.JSONDecodeError:
            return None
        return [{"name": name, "arguments": arguments}] if isinstance(arguments, dict) else None


def _build(formats: list[ToolFormat]) -> dict[str, ToolFormat]:
    registry: dict[str, ToolFormat] = {}
    for fmt in formats:
        if fmt.name in registry:
            raise ValueError(f"duplicate tool format {fmt.name!r}")
        registry[fmt.name] = fmt
    return registry


TOOL_FORMATS: dict[str, ToolFormat] = _build(
    [
        DefaultToolFormat("default"),
        QwenToolFormat("qwen", ("<tool_call>", "</tool_call>")),
        Llama3ToolFormat("llama3"),
        MistralToolFormat("mistral", ("[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]")),
        Glm4ToolFormat("glm4"),
    ]
)


def get_tool_format(name: str) -> ToolFormat:
    """Look up a tool format by name.

    Args:
        name: One of `TOOL_FORMATS`.

    Returns:
        The tool format.

    Raises:
        ConfigError: the name is unknown; the message lists the valid names and the nearest one.
    """
    try:
        return TOOL_FORMATS[name]
    except KeyError:
        pass
    near = difflib.get_close_matches(name, TOOL_FORMATS, n=1)
    hint = f" Did you mean {near[0]!r}?" if near else ""
    raise ConfigError(
        f"unknown tool_format {name!r}.{hint} "
        f"Valid tool formats: {', '.join(sorted(TOOL_FORMATS))}."
    )
