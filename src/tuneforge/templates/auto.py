"""`template: auto`: render through the tokenizer's own chat_template.

The trained spans are found by rendering twice per response turn: the conversation up to the
response with `add_generation_prompt=True` (the prompt) and the conversation including it (the
prompt plus the response). The difference is the response. This needs a prefix-stable template:
every rendering must begin with the previous one. Templates that rewrite history (Qwen3's official
template drops the reasoning of past turns, for example) are not, and raise a `ConfigError` that
names a template to use instead.

A response's trailing separator (the "\\n" after `<|im_end|>` in ChatML) is not trained: a probe
rendering finds the text that follows the assistant content, splits it into the end marker and the
whitespace after it, and that whitespace moves to the start of the next prompt. The last
response's trailing whitespace is dropped, as for named templates.

Messages map onto HF conventions: observation -> role `tool`, a function message -> an assistant
message with `tool_calls`; tools are passed as `tools=` (OpenAI-style schemas). Whether they are
shown is up to the tokenizer's template. `stop_words` are the tokenizer's eos, then the detected end
marker when it differs. Nothing here imports transformers: only the tokenizer's methods are used.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from tuneforge.data.example import Message
from tuneforge.errors import ConfigError
from tuneforge.templates.base import TurnText, normalize_messages
from tuneforge.templates.tools import ToolFormat, get_tool_format, load_calls, load_tools

_PROBE = "TUNEFORGE_PROBE_RESPONSE"
_ADVICE = "Set `template` to a named template instead (e.g. chatml, qwen3, llama3)."


class AutoTemplate:
    """A template that defers to `tokenizer.apply_chat_template` (see the module docstring)."""

    name = "auto"
    replace_eos = False
    special_tokens: tuple[str, ...] = ()

    def __init__(
        self,
        tokenizer: Any,
        default_system: str = "",
        enable_thinking: bool | None = None,
        tool_format: str | None = None,
    ) -> None:
        """Check the tokenizer's chat_template and probe its end-of-turn text.

        Args:
            tokenizer: A transformers tokenizer with a `chat_template`.
            default_system: System prompt used when a conversation has none.
            enable_thinking: Passed to the chat_template when not None.
            tool_format: The format generated tool calls are parsed in (LF's `tool_format`);
                None: `default`. The chat_template itself renders tools its own way.

        Raises:
            ConfigError: no tokenizer, no chat_template, or a template that fails the probe.
        """
        if tokenizer is None:
            raise ConfigError(
                "template 'auto' renders with the tokenizer's chat_template: pass the tokenizer"
            )
        if not isinstance(getattr(tokenizer, "chat_template", None), str):
            raise ConfigError(
                "template 'auto' needs a tokenizer with a chat_template; this one has none. "
                + _ADVICE
            )
        self._tokenizer = tokenizer
        self.default_system = default_system
        self.enable_thinking = enable_thinking
        self._tool_format = get_tool_format(tool_format or "default")
        self._marker, self._trailing = self._probe()
        words = (tokenizer.eos_token, self._marker)
        self.stop_words: tuple[str, ...] = tuple(dict.fromkeys(w for w in words if w))

    @property
    def chat_template(self) -> str:
        """The tokenizer's own chat_template."""
        return self._tokenizer.chat_template

    @property
    def tool_format(self) -> ToolFormat:
        """The format generated calls are parsed in: `tool_format`, else `default` (as
        LLaMA-Factory does)."""
        return self._tool_format

    def render(
        self,
        messages: Sequence[Message | Mapping[str, Any]],
        system: str | None = None,
        tools: str | None = "",
        enable_thinking: bool | None = None,
    ) -> list[TurnText]:
        """Render a conversation ending with a response into (prompt, response) pairs.

        Args:
            messages: Alternating prompt and response messages ending with a response.
            system: System prompt; None or "" means `default_system`.
            tools: JSON list of tool schemas, or ""/None.
            enable_thinking: Passed to the chat_template when not None.

        Returns:
            One `TurnText` per response turn.

        Raises:
            ConfigError: the chat_template is not prefix-stable for this conversation.
        """
        msgs = normalize_messages(messages, end="response")
        conv, offset = self._conversation(msgs, system)
        kwargs = self._kwargs(tools, enable_thinking)
        turns: list[TurnText] = []
        rendered, separator = "", ""
        for i in range(1, len(msgs), 2):
            prompt = self._apply(conv[: offset + i], True, kwargs)
            full = self._apply(conv[: offset + i + 1], False, kwargs)
            self._check_prefix(rendered, prompt, i)
            self._check_prefix(prompt, full, i)
            response, next_separator = self._split(full[len(prompt) :])
            turns.append(TurnText(separator + prompt[len(rendered) :], response))
            rendered, separator = full, next_separator
        return turns

    def render_prompt(
        self,
        messages: Sequence[Message | Mapping[str, Any]],
        system: str | None = None,
        tools: str | None = "",
        enable_thinking: bool | None = None,
    ) -> str:
        """Render a conversation ending with a prompt turn, with the generation prompt.

        Args:
            messages: Alternating messages ending with a user/observation turn.
            system: System prompt; None or "" means `default_system`.
            tools: JSON list of tool schemas, or ""/None.
            enable_thinking: Passed to the chat_template when not None.

        Returns:
            The text to generate from.
        """
        msgs = normalize_messages(messages, end="prompt")
        conv, _ = self._conversation(msgs, system)
        return self._apply(conv, True, self._kwargs(tools, enable_thinking))

    # ---- helpers -----------------------------------------------------------------------------

    def _kwargs(self, tools: str | None, enable_thinking: bool | None) -> dict[str, Any]:
        kwargs: dict[str, Any] = {}
        tool_list = load_tools(tools) if tools else []
        if tool_list:
            kwargs["tools"] = [
                t if t.get("type") == "function" else {"type": "function", "function": t}
                for t in tool_list
            ]
        thinking = self.enable_thinking if enable_thinking is None else enable_thinking
        if thinking is not None:
            kwargs["enable_thinking"] = thinking
        return kwargs

    def _conversation(
        self, msgs: list[Message], system: str | None
    ) -> tuple[list[dict[str, Any]], int]:
        """HF-style messages, and how many were put in front of `msgs` (the system one)."""
        system_text = system or self.default_system
        conv: list[dict[str, Any]] = (
            [{"role": "system", "content": system_text}] if system_text else []
        )
        for msg in msgs:
            if msg.role == "observation":
                conv.append({"role": "tool", "content": msg.content})
            elif msg.role == "function":
                calls = [{"type": "function", "function": call} for call in load_calls(msg.content)]
                conv.append({"role": "assistant", "content": "", "tool_calls": calls})
            else:
                conv.append({"role": msg.role, "content": msg.content})
        return conv, len(conv) - len(msgs)

    def _apply(self, conv: list[dict[str, Any]], generation: bool, kwargs: dict[str, Any]) -> str:
        try:
            return self._tokenizer.apply_chat_template(
                conv, add_generation_prompt=generation, tokenize=False, **kwargs
            )
        except Exception as err:  # the model's own template may raise anything (raise_exception)
            raise ConfigError(
                "the tokenizer's chat_template failed to render "
                f"({type(err).__name__}: {err}). {_ADVICE}"
            ) from err

    def _probe(self) -> tuple[str, str]:
        """(end marker, trailing whitespace) that follow assistant content in this template."""
        conv = [{"role": "user", "content": "Hi"}]
        prompt = self._apply(conv, True, {})
        full = self._apply([*conv, {"role": "assistant", "content": _PROBE}], False, {})
        self._check_prefix(prompt, full, 1)
        after = full[len(prompt) :].partition(_PROBE)[2]
        marker = after.rstrip()
        return marker, after[len(marker) :]

    def _split(self, text: str) -> tuple[str, str]:
        """Cut a rendered response into the trained part and the trailing separator."""
        if self._trailing and text.endswith(self._trailing):
            return text[: -len(self._trailing)], self._trailing
        return text, ""

    @staticmethod
    def _check_prefix(shorter: str, longer: str, index: int) -> None:
        if longer.startswith(shorter):
            return
        at = next(
            (i for i, (a, b) in enumerate(zip(shorter, longer, strict=False)) if a != b),
            len(longer),
        )
        raise ConfigError(
            "the tokenizer's chat_template is not prefix-stable: rendering the conversation "
            f"through message {index} changes earlier text at character {at} "
            f"({shorter[at : at + 40]!r} became {longer[at : at + 40]!r}), so trained spans cannot "
            f"be cut from it (templates that rewrite history, such as dropping past reasoning, do "
            f"this). {_ADVICE}"
        )
