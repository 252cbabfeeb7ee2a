"""Tool-call formats: how a template shows tools to the model and how the model calls them.

A tool format does three things:

- `format_tools(tools_json)`: the tool list (a JSON list of schemas, bare
  `{"name", "description", "parameters"}` or OpenAI-style `{"type": "function", "function": {...}}`)
  becomes text that the template appends to the system prompt.
- `format_calls(calls_json)`: the content of a `function` message (one call
  `{"name": ..., "arguments": {...}}` or a list of them) becomes the text the model emits.
- `parse_calls(text)`: model output becomes a list of `{"name": str, "arguments": dict}`, or
  None when the text holds no call. `parse_calls(format_calls(x))` gives back the calls of `x`.

The prompt texts and call syntaxes are LLaMA-Factory's, all thirteen of its formats (`default`,
`qwen`, `qwen3_5`, `llama3`, `mistral`, `glm4`, `glm4_moe`, `gemma4`, `lfm2`, `ling`, `minimax1`,
`minimax2`, `seed_oss`), with one deliberate change: the `llama3` tool prompt leaves out the
"Today Date" line, so that a rendering never depends on the day it runs. Where LLaMA-Factory's
call text lacks what its own parser or the model's template expects (`glm4_moe` writes no closing
`</tool_call>`, `minimax2` no `<minimax:tool_call>` wrapper, `seed_oss` no `>` after the function
name), the text is still LLaMA-Factory's, so that training renders the same tokens, and
`parse_calls` reads both forms.
"""

from __future__ import annotations

import ast
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


class LingToolFormat(QwenToolFormat):
    """Ling 2 / bailing_v2: Qwen's calls; the tool prompt starts at `# Tools` and ends with
    `detailed thinking off`."""

    def _tools_text(self, tools: list[dict[str, Any]]) -> str:
        return super()._tools_text(tools).removeprefix("\n\n") + "\ndetailed thinking off"


def _xml_value(value: Any) -> str:
    """An argument as the XML-style formats write it: strings bare, the rest as JSON."""
    return value if isinstance(value, str) else _dumps(value)


def _xml_parse_value(raw: str, strip: bool = True) -> Any:
    """Read back `_xml_value`: JSON when it decodes, else the text itself."""
    try:
        return json.loads(raw.strip())
    except json.JSONDecodeError:
        return raw.strip() if strip else raw


_GLM4_MOE_CALL_RE = re.compile(
    r"<tool_call>([\w.\-]+)(.*?)(?:</tool_call>|(?=<tool_call>)|\Z)", re.DOTALL
)
_GLM4_MOE_ARG_RE = re.compile(
    r"\s*<arg_key>(.*?)</arg_key>\s*<arg_value>(.*?)</arg_value>", re.DOTALL
)


class Glm4MoeToolFormat(ToolFormat):
    """GLM-4.5 / 4.6 / 4.7: `<tool_call>name` then `<arg_key>` / `<arg_value>` pairs.

    As LLaMA-Factory writes it, a call has no closing `</tool_call>` (GLM's own template closes
    it); `parse_calls` reads either.
    """

    def _tools_text(self, tools: list[dict[str, Any]]) -> str:
        tool_text = "".join("\n" + _dumps(_wrapped(tool)) for tool in tools)
        return (
            "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
            "You are provided with function signatures within <tools></tools> XML tags:\n<tools>"
            + tool_text
            + "\n</tools>\n\nFor each function call, output the function name and arguments "
            "within the following XML format:\n<tool_call>{function-name}\n"
            "<arg_key>{arg-key-1}</arg_key>\n<arg_value>{arg-value-1}</arg_value>\n"
            "<arg_key>{arg-key-2}</arg_key>\n<arg_value>{arg-value-2}</arg_value>\n...\n"
            "</tool_call>\n"
        )

    def _calls_text(self, calls: list[ToolCall]) -> str:
        texts = []
        for call in calls:
            text = "\n<tool_call>" + call["name"]
            for key, value in call["arguments"].items():
                text += f"\n<arg_key>{key}</arg_key>\n<arg_value>{_xml_value(value)}</arg_value>"
            texts.append(text)
        return "\n".join(texts)

    def parse_calls(self, text: str) -> list[ToolCall] | None:
        calls = []
        for name, body in _GLM4_MOE_CALL_RE.findall(text):
            pairs = _GLM4_MOE_ARG_RE.findall(body)
            arguments = {key.strip(): _xml_parse_value(value) for key, value in pairs}
            if _GLM4_MOE_ARG_RE.sub("", body).strip():
                return None  # something else than argument pairs: not this format
            calls.append({"name": name, "arguments": arguments})
        return calls or None


_MINIMAX1_BLOCK_RE = re.compile(r"<tool_calls>\s*(.+?)\s*</tool_calls>", re.DOTALL)


class MiniMax1ToolFormat(ToolFormat):
    """MiniMax-M1: tools as JSON lines in `<tools>`, calls as JSON lines in `<tool_calls>`."""

    def _tools_text(self, tools: list[dict[str, Any]]) -> str:
        tool_text = "".join(_dumps(_bare(tool)) + "\n" for tool in tools)
        return (
            "You are provided with these tools:\n<tools>\n"
            + tool_text
            + "</tools>\n\nIf you need to call tools, please respond with "
            "<tool_calls></tool_calls> XML tags, and provide tool-name and json-object of "
            "arguments, following the format "
            'below:\n<tool_calls>\n{"name": <tool-name-1>, "arguments": <args-json-object-1>}\n'
            "...\n</tool_calls>"
        )

    def _calls_text(self, calls: list[ToolCall]) -> str:
        lines = [_dumps({"name": c["name"], "arguments": c["arguments"]}) for c in calls]
        return "<tool_calls>\n" + "\n".join(lines) + "\n</tool_calls>"

    def parse_calls(self, text: str) -> list[ToolCall] | None:
        match = _MINIMAX1_BLOCK_RE.search(text)
        if match is None:
            return None
        calls = []
        for line in filter(None, (line.strip() for line in match.group(1).split("\n"))):
            found = _call_from_json(line, "arguments")
            if found is None or len(found) != 1:
                return None
            calls += found
        return calls or None


_MINIMAX2_INVOKE_RE = re.compile(r'<invoke name="(.*?)">(.*?)</invoke>', re.DOTALL)
_MINIMAX2_PARAM_RE = re.compile(r'<parameter name="(.*?)">(.*?)</parameter>', re.DOTALL)


class MiniMax2ToolFormat(ToolFormat):
    """MiniMax-M2: tools in `<tool>` tags, calls as `<invoke name=...>` with `<parameter>`s.

    LLaMA-Factory writes the `<invoke>` blocks without the `<minimax:tool_call>` wrapper that its
    tool prompt shows; `parse_calls` reads them with or without it.
    """

    def _tools_text(self, tools: list[dict[str, Any]]) -> str:
        tool_text = "".join("<tool>" + _dumps(_bare(tool)) + "</tool>\n" for tool in tools)
        return (
            "\n\n# Tools\n\nYou may call one or more tools to assist with the user query.\n"
            "Here are the tools available in JSONSchema format:\n\n<tools>\n"
            + tool_text
            + "</tools>\n\nWhen making tool calls, use XML format to invoke tools and pass "
            'parameters:\n\n<minimax:tool_call>\n<invoke name="tool-name-1">\n'
            '<parameter name="param-key-1">param-value-1</parameter>\n'
            '<parameter name="param-key-2">param-value-2</parameter>\n...\n</invoke>\n'
            "</minimax:tool_call>"
        )

    def _calls_text(self, calls: list[ToolCall]) -> str:
        texts = []
        for call in calls:
            text = f'<invoke name="{call["name"]}">'
            for key, value in call["arguments"].items():
                text += f'\n<parameter name="{key}">{_xml_value(value)}</parameter>'
            texts.append(text + "\n</invoke>")
        return "\n".join(texts)

    def parse_calls(self, text: str) -> list[ToolCall] | None:
        calls = []
        for name, body in _MINIMAX2_INVOKE_RE.findall(text):
            arguments = {
                key: _xml_parse_value(value, strip=False)
                for key, value in _MINIMAX2_PARAM_RE.findall(body)
            }
            calls.append({"name": name.strip(), "arguments": arguments})
        return calls or None


_QWEN35_CALL_RE = re.compile(
    r"<tool_call>\s*<function=([^\s<>]+)>(.*?)</function>\s*</tool_call>", re.DOTALL
)
_FUNCTION_PARAM_RE = re.compile(r"<parameter=([^\s<>]+)>(.*?)</parameter>", re.DOTALL)


class Qwen35ToolFormat(ToolFormat):
    """Qwen 3.5: tools as JSON lines in `<tools>`; a call is `<function=name>` with one
    `<parameter=key>` block per argument, inside `<tool_call>`."""

    def _tools_text(self, tools: list[dict[str, Any]]) -> str:
        tool_text = "".join("\n" + _dumps(_bare(tool)) for tool in tools)
        return (
            "\n\n# Tools\n\nYou have access to the following functions:\n\n<tools>"
            + tool_text
            + "\n</tools>\n\nIf you choose to call a function ONLY reply in the following format "
            "with NO suffix:\n\n<tool_call>\n<function=example_function_name>\n"
            "<parameter=example_parameter_1>\nvalue_1\n</parameter>\n"
            "<parameter=example_parameter_2>\nThis is the value for the second parameter\n"
            "that can span\nmultiple lines\n</parameter>\n</function>\n</tool_call>\n\n"
            "<IMPORTANT>\nReminder:\n- Function calls MUST follow the specified format: an inner "
            "<function=...></function> block must be nested within <tool_call></tool_call> XML "
            "tags\n- Required parameters MUST be specified\n- You may provide optional reasoning "
            "for your function call in natural language BEFORE the function call, but NOT after\n"
            "- If there is no function call available, answer the question like normal with your "
            "current knowledge and do not tell the user about function calls\n</IMPORTANT>"
        )

    def _calls_text(self, calls: list[ToolCall]) -> str:
        texts = []
        for call in calls:
            text = f"<tool_call>\n<function={call['name']}>"
            for key, value in call["arguments"].items():
                text += f"\n<parameter={key}>\n{_xml_value(value)}\n</parameter>"
            texts.append(text + "\n</function>\n</tool_call>")
        return "\n".join(texts)

    def parse_calls(self, text: str) -> list[ToolCall] | None:
        calls = []
        for name, body in _QWEN35_CALL_RE.findall(text):
            arguments = {
                key: _xml_parse_value(value) for key, value in _FUNCTION_PARAM_RE.findall(body)
            }
            calls.append({"name": name, "arguments": arguments})
        return calls or None


# The name ends at whitespace or `>`: LLaMA-Factory writes `<function=name` with no `>`.
_SEED_CALL_RE = re.compile(
    r"<seed:tool_call>\s*<function=([^\s<>]+)>?(.*?)</function>\s*</seed:tool_call>", re.DOTALL
)


class SeedOssToolFormat(ToolFormat):
    """Seed-OSS: the tool list as one JSON array (as given, bare or wrapped); a call is
    `<function=name` with `<parameter=key>value</parameter>` lines inside `<seed:tool_call>`.

    The texts are LLaMA-Factory's, with its quirks: the tool prompt starts with `system\\n`
    (inside the system turn it is appended to), and a call's `<function=name` has no `>`.
    """

    def _tools_text(self, tools: list[dict[str, Any]]) -> str:
        return (
            "system\nYou are Doubao, a helpful AI assistant. You may call one or more functions to "
            "assist with the user query.Tool List:\nYou are authorized to use the following tools "
            "(described in JSON Schema format). Before performing any task, you must decide how "
            "to call them based on the descriptions and parameters of these tools.\n"
            + _dumps(tools)
            + "\n工具调用请遵循如下格式:\n<seed:tool_call>\n<function=example_function_name>\n"
            "<parameter=example_parameter_1>value_1</parameter>\n"
            "<parameter=example_parameter_2>This is the value for the second parameter\n"
            "that can span\nmultiple lines</parameter>\n</function>\n</seed:tool_call>\n"
        )

    def _calls_text(self, calls: list[ToolCall]) -> str:
        texts = []
        for call in calls:
            text = "\n<seed:tool_call>\n<function=" + call["name"]
            for key, value in call["arguments"].items():
                text += f"\n<parameter={key}>{_xml_value(value)}</parameter>"
            texts.append(text + "\n</function>\n</seed:tool_call>")
        return "\n".join(texts)

    def parse_calls(self, text: str) -> list[ToolCall] | None:
        calls = []
        for name, body in _SEED_CALL_RE.findall(text):
            arguments = {
                key: _xml_parse_value(value, strip=False)
                for key, value in _FUNCTION_PARAM_RE.findall(body)
            }
            calls.append({"name": name, "arguments": arguments})
        return calls or None


_LFM2_NAMES = {"true": True, "false": False, "null": None}


def _python_literal(node: ast.AST) -> Any:
    """A literal of a pythonic call, where JSON's true/false/null may stand for Python's."""
    if isinstance(node, ast.Name) and node.id in _LFM2_NAMES:
        return _LFM2_NAMES[node.id]
    if isinstance(node, ast.List):
        return [_python_literal(item) for item in node.elts]
    if isinstance(node, ast.Dict):
        if any(key is None for key in node.keys):
            raise ValueError("dict unpacking is not a literal")
        return {
            _python_literal(key): _python_literal(value)  # type: ignore[arg-type]
            for key, value in zip(node.keys, node.values)
        }
    return ast.literal_eval(node)


class Lfm2ToolFormat(ToolFormat):
    """LFM2 / 2.5: the tool list as JSON between `<|tool_list_start|>` markers; calls written as
    Python, `[name(key="value", n=1)]`, between `<|tool_call_start|>` markers."""

    def _tools_text(self, tools: list[dict[str, Any]]) -> str:
        return (
            "List of tools: <|tool_list_start|>"
            + _dumps([_bare(tool) for tool in tools])
            + "<|tool_list_end|>"
        )

    def _calls_text(self, calls: list[ToolCall]) -> str:
        texts = []
        for call in calls:
            kwargs = [
                f'{key}="{value}"' if isinstance(value, str) else f"{key}={_dumps(value)}"
                for key, value in call["arguments"].items()
            ]
            texts.append(f"{call['name']}({', '.join(kwargs)})")
        return "<|tool_call_start|>[" + ", ".join(texts) + "]<|tool_call_end|>"

    def parse_calls(self, text: str) -> list[ToolCall] | None:
        start = text.find("<|tool_call_start|>")
        end = text.find("<|tool_call_end|>", start)
        if start < 0 or end < 0:
            return None
        try:
            tree = ast.parse(text[start + len("<|tool_call_start|>") : end].strip(), mode="eval")
        except SyntaxError:
            return None
        nodes = tree.body.elts if isinstance(tree.body, ast.List) else [tree.body]
        calls = []
        for node in nodes:
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name) or node.args:
                return None
            try:
                arguments = {kw.arg: _python_literal(kw.value) for kw in node.keywords}
            except (ValueError, TypeError, SyntaxError):
                return None
            if None in arguments:  # **kwargs
                return None
            calls.append({"name": node.func.id, "arguments": arguments})
        return calls or None


_GEMMA4_QUOTE = '<|"|>'
_GEMMA4_CALL_RE = re.compile(r"<\|tool_call>call:([^{\s]+)\{(.*?)\}<tool_call\|>", re.DOTALL)


def _gemma4_quoted(text: str) -> str:
    return f"{_GEMMA4_QUOTE}{text}{_GEMMA4_QUOTE}"


def _gemma4_value(value: Any) -> str:
    """An argument in Gemma 4's notation: quoted strings, bare keys (sorted), JSON-like rest."""
    if isinstance(value, str):
        return _gemma4_quoted(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{_gemma4_value(value[k])}" for k in sorted(value)) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_gemma4_value(item) for item in value) + "]"
    if value is None:
        return "null"
    return str(value)


class _Gemma4Reader:
    """Reads Gemma 4's argument notation back (the inverse of `_gemma4_value`)."""

    _ATOM_RE = re.compile(r"[^,:{}\[\]\s]+")

    def __init__(self, text: str):
        self.text, self.pos = text, 0

    def _skip(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def _expect(self, char: str) -> None:
        self._skip()
        if not self.text.startswith(char, self.pos):
            raise ValueError(f"expected {char!r} at {self.pos}")
        self.pos += len(char)

    def _string(self) -> str:
        self._expect(_GEMMA4_QUOTE)
        end = self.text.find(_GEMMA4_QUOTE, self.pos)
        if end < 0:
            raise ValueError("unterminated string")
        value, self.pos = self.text[self.pos : end], end + len(_GEMMA4_QUOTE)
        return value

    def _key(self) -> str:
        self._skip()
        if self.text.startswith(_GEMMA4_QUOTE, self.pos):
            return self._string()
        match = self._ATOM_RE.match(self.text, self.pos)
        if match is None:
            raise ValueError(f"expected a key at {self.pos}")
        self.pos = match.end()
        return match.group(0)

    def members(self, closing: str) -> dict[str, Any]:
        """`key:value` pairs up to (not including) `closing` or the end of the text."""
        out: dict[str, Any] = {}
        self._skip()
        while self.pos < len(self.text) and not self.text.startswith(closing, self.pos):
            key = self._key()
            self._expect(":")
            out[key] = self.value()
            self._skip()
            if self.text.startswith(",", self.pos):
                self.pos += 1
                self._skip()
        return out

    def value(self) -> Any:
        self._skip()
        if self.text.startswith(_GEMMA4_QUOTE, self.pos):
            return self._string()
        if self.text.startswith("{", self.pos):
            self.pos += 1
            obj = self.members("}")
            self._expect("}")
            return obj
        if self.text.startswith("[", self.pos):
            self.pos += 1
            items: list[Any] = []
            self._skip()
            while not self.text.startswith("]", self.pos):
                items.append(self.value())
                self._skip()
                if self.text.startswith(",", self.pos):
                    self.pos += 1
                    self._skip()
                elif not self.text.startswith("]", self.pos):
                    raise ValueError(f"expected ',' or ']' at {self.pos}")
            self.pos += 1
            return items
        match = self._ATOM_RE.match(self.text, self.pos)
        if match is None:
            raise ValueError(f"expected a value at {self.pos}")
        self.pos = match.end()
        return json.loads(match.group(0))  # true, false, null, numbers


class Gemma4ToolFormat(ToolFormat):
    """Gemma 4: `declaration:name{...}` lines, calls `<|tool_call>call:name{k:v}<tool_call|>` with
    strings quoted by `<|"|>` and keys sorted."""

    def _tools_text(self, tools: list[dict[str, Any]]) -> str:
        return "\n".join(self._declaration(_bare(tool)) for tool in tools)

    @staticmethod
    def _declaration(tool: dict[str, Any]) -> str:
        description = _gemma4_quoted(tool.get("description", ""))
        text = f"declaration:{tool['name']}{{description:{description}"
        params = tool.get("parameters")
        if params:
            parts = []
            if params.get("properties"):
                props = []
                for name, schema in params["properties"].items():
                    items = []
                    if schema.get("description"):
                        items.append(f"description:{_gemma4_quoted(schema['description'])}")
                    if schema.get("type"):
                        items.append(f"type:{_gemma4_quoted(str(schema['type']).upper())}")
                    props.append(f"{name}:{{{','.join(items)}}}")
                parts.append(f"properties:{{{','.join(props)}}}")
            if params.get("required"):
                required = ",".join(_gemma4_quoted(str(r)) for r in params["required"])
                parts.append(f"required:[{required}]")
            if params.get("type"):
                parts.append(f"type:{_gemma4_quoted(str(params['type']).upper())}")
            text += f",parameters:{{{','.join(parts)}}}"
        response = tool.get("response")
        if response:
            parts = []
            if response.get("description"):
                parts.append(f"description:{_gemma4_quoted(response['description'])}")
            kind = str(response.get("type", "")).upper()
            if kind == "OBJECT":
                parts.append(f"type:{_gemma4_quoted(kind)}")
            text += f",response:{{{','.join(parts)}}}"
        return text + "}"

    def _calls_text(self, calls: list[ToolCall]) -> str:
        return "".join(
            f"<|tool_call>call:{c['name']}{_gemma4_value(c['arguments'])}<tool_call|>"
            for c in calls
        )

    def parse_calls(self, text: str) -> list[ToolCall] | None:
        calls = []
        for name, body in _GEMMA4_CALL_RE.findall(text):
            reader = _Gemma4Reader(body)
            try:
                arguments = reader.members("\0")
            except (ValueError, json.JSONDecodeError):
                return None
            calls.append({"name": name.strip(), "arguments": arguments})
        return calls or None


_GLM4_MOE_TOKENS = (
    "<tool_call>",
    "</tool_call>",
    "<arg_key>",
    "</arg_key>",
    "<arg_value>",
    "</arg_value>",
)
_LFM2_TOKENS = (
    "<|tool_list_start|>",
    "<|tool_list_end|>",
    "<|tool_call_start|>",
    "<|tool_call_end|>",
)


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
        Glm4MoeToolFormat("glm4_moe", _GLM4_MOE_TOKENS),
        Gemma4ToolFormat("gemma4", ("<|tool_call>", "<tool_call|>", _GEMMA4_QUOTE)),
        Lfm2ToolFormat("lfm2", _LFM2_TOKENS),
        LingToolFormat("ling", ("<tool_call>", "</tool_call>")),
        MiniMax1ToolFormat("minimax1"),
        MiniMax2ToolFormat("minimax2"),
        Qwen35ToolFormat("qwen3_5", ("<tool_call>", "</tool_call>")),
        SeedOssToolFormat("seed_oss"),
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
