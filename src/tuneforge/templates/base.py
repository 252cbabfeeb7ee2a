"""The declarative chat template and how it renders a conversation into trained spans.

A `Template` is data: a handful of slot strings and flags. Slots may hold three placeholders,
`{content}` (the message text), `{bos_token}` and `{eos_token}` (the tokenizer's, resolved by
`get_template`). A conversation renders as::

    prefix + [system slot]
    + user slot (first turn: system slot fused in front of the content when `system_in_user`)
    + assistant_header                        <- generation prompt; end of the first prompt
    + assistant slot | function slot          <- trained response (content + end-of-turn marker)
    + separator                               <- untrained, opens the next prompt
    + user | observation slot + assistant_header + response ...

`render` cuts that text into one `TurnText(prompt, response)` per response turn; the
concatenation of all prompts and responses is the whole rendering. The separator after the last
response is not part of it: nothing follows, and it is not trained. Templates with `efficient_eos`
(LLaMA-Factory's flag: no end marker after each response) end the last response with the eos.

System prompt: `system or default_system`. Tools are rendered by the tool format and appended to
the system text (LLaMA-Factory's placement); when there is no system text the tool text's leading
newlines are dropped, as the official Qwen templates do.

The tool text is the tool format's prompt, or with `tools_slot` the tool list itself (its JSON
as given) put in that slot (phi4_mini). A function message whose content wraps its JSON in
`tool_call_words` keeps the text around it: that text, then the formatted calls.

Thinking (templates with `reasoning=True`: qwen3, deepseekr1, glm4_moe, gpt_oss...). Let
`thinking` be the call's `enable_thinking`, or the template's default when that is None. The
thought is a block `thought_words[0]...thought_words[1]` (`<think>...</think>` unless the template
says otherwise) written inline at the start of the assistant content. Then:

1. History responses (every response but the last of `render`, every response of
   `render_prompt`) lose their thought, as at inference, unless `preserve_thinking` is set. With
   `thinking` False every response loses it, the last one too. Removal deletes every
   `<think>...</think>` and then leading newlines.
2. A response that (after step 1) contains neither `<think>` nor `</think>` gets the empty
   thought block (`<think>\\n\\n</think>\\n\\n`, or `empty_thought_text`) right after the
   assistant header: in the response (trained) when `thinking` is True, at the end of the prompt
   (untrained) when it is False.
3. The generation prompt of `render_prompt` ends with the empty thought block when `thinking`
   is False, and with the bare assistant header when it is True.

This follows LLaMA-Factory's ReasoningTemplate with two differences. Its multi-turn SFT path keeps
the thoughts of history turns when thinking is on, whatever `preserve_thinking` says (here they are
stripped unless `preserve_thinking` is set, as its single-turn path and Qwen3's official template
do). Its inference path renders history turns with no thought block at all, as Qwen3's official
template does; here they keep the empty block that step 2 gives them in training, so that each
turn's prompt is exactly `render_prompt` of the conversation so far. Rendering is deterministic:
no template inserts the current date.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Any, Protocol

from tuneforge.data.example import PROMPT_ROLES, RESPONSE_ROLES, Message
from tuneforge.errors import ConfigError, DataError
from tuneforge.templates.jinja import build_chat_template
from tuneforge.templates.tools import ToolFormat, get_tool_format, load_tools

_PLACEHOLDER_RE = re.compile(r"\{(content|bos_token|eos_token)\}")


@dataclass(frozen=True, slots=True)
class TurnText:
    """One response turn cut into what is conditioned on and what is trained.

    Attributes:
        prompt: Untrained text before the response: the separator after the previous response,
            template prefix and system prompt (first turn), the user/observation turn and the
            assistant header.
        response: Trained text: the assistant content (or formatted tool calls) and its
            end-of-turn marker.
    """

    prompt: str
    response: str


class ChatTemplate(Protocol):
    """What encoders and inference code use: `Template` and `AutoTemplate` both provide it."""

    # read-only: a frozen dataclass field does not satisfy a settable protocol attribute
    @property
    def name(self) -> str: ...
    @property
    def stop_words(self) -> tuple[str, ...]: ...
    @property
    def replace_eos(self) -> bool: ...
    @property
    def chat_template(self) -> str: ...
    @property
    def special_tokens(self) -> tuple[str, ...]: ...
    @property
    def tool_format(self) -> ToolFormat: ...

    def render(
        self,
        messages: Sequence[Message | Mapping[str, Any]],
        system: str | None = None,
        tools: str | None = "",
        enable_thinking: bool | None = None,
    ) -> list[TurnText]: ...

    def render_prompt(
        self,
        messages: Sequence[Message | Mapping[str, Any]],
        system: str | None = None,
        tools: str | None = "",
        enable_thinking: bool | None = None,
    ) -> str: ...


def normalize_messages(messages: Sequence[Message | Mapping[str, Any]], end: str) -> list[Message]:
    """Check that messages alternate prompt and response turns and end as required.

    Args:
        messages: `Message` objects or mappings with `role` and `content`.
        end: "response" (for `render`) or "prompt" (for `render_prompt`).

    Returns:
        The messages as `Message` objects.

    Raises:
        DataError: a role is unknown, turns do not alternate, or the last turn is of the wrong kind.
    """
    out = [m if isinstance(m, Message) else Message(m["role"], m["content"]) for m in messages]
    if not out:
        raise DataError("a conversation needs at least one message")
    for i, msg in enumerate(out):
        want = PROMPT_ROLES if i % 2 == 0 else RESPONSE_ROLES
        if msg.role not in want:
            kind = "prompt (user/observation)" if i % 2 == 0 else "response (assistant/function)"
            raise DataError(
                f"message {i} has role {msg.role!r} but a {kind} turn belongs there: messages must "
                "alternate user/observation and assistant/function, starting with a user turn"
            )
        if not isinstance(msg.content, str):
            raise DataError(
                f"message {i} ({msg.role}) content must be a string, "
                f"got {type(msg.content).__name__}"
            )
    ends_with_prompt = len(out) % 2 == 1
    if end == "response" and ends_with_prompt:
        raise DataError(
            "render() needs a conversation that ends with a response; use render_prompt()"
        )
    if end == "prompt" and not ends_with_prompt:
        raise DataError(
            "render_prompt() needs a conversation that ends with a user/observation turn"
        )
    return out


@dataclass(frozen=True)
class Template:
    """A chat template as data. See the module docstring for how the slots combine.

    Attributes:
        name: Registry name (LLaMA-Factory's template name).
        prefix: Text opening the conversation (e.g. `{bos_token}`).
        system: System slot; `{content}` is the system prompt plus the tool text.
        system_in_user: Put the rendered system slot in front of the first user content
            instead of its own turn (llama2, mistral, gemma).
        user: User slot, without the assistant header.
        observation: Tool-result slot (prompt side); None means the user slot.
        assistant_header: Text that opens an assistant turn: the generation prompt.
        assistant: Response slot: content and end-of-turn marker (no trailing newline).
        function: Response slot for tool calls; None means the assistant slot.
        separator: Untrained text between a response and the next prompt turn.
        default_system: Used when the conversation has no system prompt.
        stop_words: Generation stops on these; the first is the end marker a model learns.
            Once bound by `get_template` the tokenizer's eos is included.
        replace_eos: LLaMA-Factory's flag: the tokenizer's eos becomes `stop_words[0]`.
        efficient_eos: LLaMA-Factory's flag: responses carry no end marker; the last response of
            a conversation ends with `{eos_token}`.
        tool_format_name: Name of the tool format (see `tools.TOOL_FORMATS`).
        tools_slot: When set, the tool text is this slot filled with the tool list's JSON,
            instead of the tool format's prompt (phi4_mini: `<|tool|>{content}<|/tool|>`).
        tool_call_words: Opening and closing of a tool call that a function message's content
            may wrap its JSON in, with free text around it (LLaMA-Factory's `tool_call_words`).
        reasoning: Thoughts are handled as described in the module docstring.
        thought_words: Opening and closing of a thought block, newlines included.
        empty_thought_text: The empty thought block when it is not the two thought words
            joined (glm4_7: only the closing tag).
        enable_thinking: Default for `enable_thinking=None` in reasoning templates.
        preserve_thinking: Reasoning templates keep the thoughts of history turns (when
            thinking is on) instead of stripping them (LLaMA-Factory's `preserve_thinking`).
        markers: Marker strings of this family that must be single tokens.
        bos_token: What `{bos_token}` resolves to; None when only a tokenizer can tell.
        eos_token: What `{eos_token}` resolves to; None when only a tokenizer can tell.
    """

    name: str
    prefix: str = ""
    system: str = "{content}"
    system_in_user: bool = False
    user: str = "{content}"
    observation: str | None = None
    assistant_header: str = ""
    assistant: str = "{content}{eos_token}"
    function: str | None = None
    separator: str = ""
    default_system: str = ""
    stop_words: tuple[str, ...] = ()
    replace_eos: bool = False
    efficient_eos: bool = False
    tool_format_name: str = "default"
    tools_slot: str | None = None
    tool_call_words: tuple[str, str] = ("<tool_call>", "</tool_call>")
    reasoning: bool = False
    thought_words: tuple[str, str] = ("<think>\n", "\n</think>\n\n")
    empty_thought_text: str | None = None
    enable_thinking: bool = True
    preserve_thinking: bool = False
    markers: tuple[str, ...] = ()
    bos_token: str | None = None
    eos_token: str | None = None

    def __post_init__(self) -> None:
        for slot in ("system", "user", "observation", "assistant", "function", "tools_slot"):
            value = getattr(self, slot)
            if value is not None and value.count("{content}") != 1:
                raise ValueError(f"template {self.name!r}: slot {slot!r} needs one {{content}}")
        for slot in ("prefix", "assistant_header", "separator"):
            if "{content}" in getattr(self, slot):
                raise ValueError(f"template {self.name!r}: slot {slot!r} cannot hold {{content}}")
        if self.replace_eos and not self.stop_words:
            raise ValueError(f"template {self.name!r}: replace_eos needs stop_words")

    # ---- public properties -------------------------------------------------------------------

    @property
    def tool_format(self) -> ToolFormat:
        """The tool format object (`format_tools`, `format_calls`, `parse_calls`)."""
        return get_tool_format(self.tool_format_name)

    @property
    def special_tokens(self) -> tuple[str, ...]:
        """Markers, stop words, tool-format and thought markers that must be single tokens.

        A thought tag counts as one token unless it is made of markers (gpt_oss's
        `<|channel|>analysis<|message|>`): then the markers are the tokens.
        """
        words: list[str] = [*self.markers, *self.stop_words, *self.tool_format.special_tokens]
        if self.reasoning:
            tags = (w.strip() for w in self.thought_words)
            words += [tag for tag in tags if not any(m in tag for m in self.markers if m != tag)]
        return tuple(dict.fromkeys(words))

    @cached_property
    def chat_template(self) -> str:
        """An equivalent jinja chat template (HF conventions); see `templates.jinja`."""
        return build_chat_template(self)

    def with_tokens(self, bos_token: str | None, eos_token: str | None) -> Template:
        """Return a copy whose `{bos_token}`/`{eos_token}` resolve to these tokens.

        With `replace_eos` the eos is `stop_words[0]` whatever is passed (the tokenizer's eos
        gets replaced by it). With `efficient_eos` the eos becomes `stop_words[0]`, since it is
        what ends a trained response. Otherwise the eos is appended to the stop words.

        Args:
            bos_token: The tokenizer's bos ("" when it has none).
            eos_token: The tokenizer's eos.

        Returns:
            The bound template.
        """
        eos = self.stop_words[0] if self.replace_eos else eos_token
        stops = self.stop_words
        if eos and self.efficient_eos:  # the eos is what ends a trained response: it goes first
            stops = (eos, *(w for w in stops if w != eos))
        elif eos and eos not in stops:
            stops = (*stops, eos)
        return replace(self, bos_token=bos_token, eos_token=eos, stop_words=stops)

    # ---- rendering ---------------------------------------------------------------------------

    def render(
        self,
        messages: Sequence[Message | Mapping[str, Any]],
        system: str | None = None,
        tools: str | None = "",
        enable_thinking: bool | None = None,
    ) -> list[TurnText]:
        """Render a conversation into one (prompt, response) text pair per response turn.

        Args:
            messages: Alternating user/observation and assistant/function messages that end
                with a response.
            system: System prompt; None or "" means the template's default.
            tools: JSON list of tool schemas, or ""/None for none.
            enable_thinking: Reasoning templates only; None means the template's default.

        Returns:
            One `TurnText` per response turn; joined they give the whole rendering.
        """
        msgs = normalize_messages(messages, end="response")
        turns, _ = self._render(msgs, system, tools, self._thinking(enable_thinking))
        return turns

    def render_prompt(
        self,
        messages: Sequence[Message | Mapping[str, Any]],
        system: str | None = None,
        tools: str | None = "",
        enable_thinking: bool | None = None,
    ) -> str:
        """Render a conversation that ends with a prompt turn, up to the generation prompt.

        Args:
            messages: Alternating messages ending with a user/observation turn.
            system: System prompt; None or "" means the template's default.
            tools: JSON list of tool schemas, or ""/None for none.
            enable_thinking: Reasoning templates only; None means the template's default.

        Returns:
            The text to generate from (inference).
        """
        msgs = normalize_messages(messages, end="prompt")
        turns, tail = self._render(msgs, system, tools, self._thinking(enable_thinking))
        return "".join(t.prompt + t.response for t in turns) + tail

    def _thinking(self, enable_thinking: bool | None) -> bool:
        return self.enable_thinking if enable_thinking is None else enable_thinking

    def _render(
        self, msgs: list[Message], system: str | None, tools: str | None, thinking: bool
    ) -> tuple[list[TurnText], str]:
        """Walk the turns; returns the TurnTexts and the untrained text after the last one."""
        carry, fused = self._opening(system, tools)
        turns: list[TurnText] = []
        for i, msg in enumerate(msgs):
            if msg.role in PROMPT_ROLES:
                slot = self.user if msg.role == "user" else (self.observation or self.user)
                content = fused + msg.content if i == 0 else msg.content
                carry += self._fill(slot, content) + self._fill(self.assistant_header)
                continue
            last = i == len(msgs) - 1
            response, block = self._response(msg, history=not last, thinking=thinking)
            if block and thinking:
                response = block + response
            elif block:
                carry += block
            if self.efficient_eos and last:
                response += self._token("eos_token")
            turns.append(TurnText(carry, response))
            carry = self._fill(self.separator)
        if self.reasoning and not thinking and msgs[-1].role in PROMPT_ROLES:
            carry += self.empty_thought
        return turns, carry

    def _opening(self, system: str | None, tools: str | None) -> tuple[str, str]:
        """Prefix plus system turn, and the text to fuse into the first user turn."""
        system_text = system or self.default_system
        tool_text = self._tool_text(tools) if tools else ""
        if tool_text:
            system_text = system_text + tool_text if system_text else tool_text.lstrip("\n")
        opening = self._fill(self.prefix)
        if not system_text:
            return opening, ""
        block = self._fill(self.system, system_text)
        return (opening, block) if self.system_in_user else (opening + block, "")

    def _tool_text(self, tools: str) -> str:
        """What the tool list adds to the system text."""
        if self.tools_slot is None:
            return self.tool_format.format_tools(tools)
        load_tools(tools)  # a malformed list fails here as it does for every tool format
        return self._fill(self.tools_slot, tools)

    def _response(self, msg: Message, history: bool, thinking: bool) -> tuple[str, str]:
        """The filled response slot and the empty thought block it needs ("" if none)."""
        content = msg.content
        block = ""
        if self.reasoning:
            if not thinking or (history and not self.preserve_thinking):
                content = self.strip_thought(content)
            if not self.has_thought(content):
                block = self.empty_thought
        if msg.role == "function":
            return self._fill(
                self.function or self.assistant, self._format_function(content)
            ), block
        return self._fill(self.assistant, content), block

    def _format_function(self, content: str) -> str:
        """Format tool calls; a leading thought block stays in front of them.

        When the content wraps the calls' JSON in `tool_call_words`, the text around that
        block comes first, then the formatted calls (LLaMA-Factory's FunctionFormatter).
        """
        opening, closing = self.tool_call_words
        start = content.find(opening)
        end = content.find(closing, start + len(opening)) if start >= 0 else -1
        if end >= 0:
            wrapped = content[start : end + len(closing)]
            calls = content[start + len(opening) : end]
            return content.replace(wrapped, "") + self.tool_format.format_calls(calls)
        match = self._thought_re.search(content)
        if match is None:
            return self.tool_format.format_calls(content)
        end = match.end()
        while end < len(content) and content[end] in "\n":
            end += 1
        thought = content[match.start() : end]
        return thought + self.tool_format.format_calls(content[: match.start()] + content[end:])

    # ---- thoughts ----------------------------------------------------------------------------

    @property
    def empty_thought(self) -> str:
        """The empty thought block, e.g. `<think>\\n\\n</think>\\n\\n`."""
        if self.empty_thought_text is not None:
            return self.empty_thought_text
        return self.thought_words[0] + self.thought_words[1]

    @cached_property
    def _thought_re(self) -> re.Pattern[str]:
        open_tag, close_tag = (w.strip() for w in self.thought_words)
        return re.compile(re.escape(open_tag) + ".*?" + re.escape(close_tag), re.DOTALL)

    def has_thought(self, content: str) -> bool:
        """Whether content holds an opening or closing thought tag."""
        return any(w.strip() in content for w in self.thought_words)

    def strip_thought(self, content: str) -> str:
        """Remove every thought block, then leading newlines."""
        return self._thought_re.sub("", content).lstrip("\n")

    # ---- slots -------------------------------------------------------------------------------

    def _token(self, key: str) -> str:
        value = self.bos_token if key == "bos_token" else self.eos_token
        if value is None:
            raise ConfigError(
                f"template {self.name!r} uses the tokenizer's {key}, which is unknown: call "
                f"get_template({self.name!r}, tokenizer) with a tokenizer that defines it"
            )
        return value

    def _fill(self, slot: str, content: str = "") -> str:
        def sub(match: re.Match[str]) -> str:
            key = match.group(1)
            return content if key == "content" else self._token(key)

        return _PLACEHOLDER_RE.sub(sub, slot)
