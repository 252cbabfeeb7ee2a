"""OpenAI chat messages -> the engine's conversation (system prompt, turns, tools).

Roles map as in LLaMA-Factory: system/developer -> the system prompt, user -> user, assistant ->
assistant, assistant with tool_calls -> function, tool -> observation. Consecutive tool messages
(results of parallel calls) become one observation turn, their contents joined by newlines,
because the templates alternate one prompt turn with one response turn. Text content may be a
string or an array of text parts (joined by newlines); any other part (images, audio, files) is
refused, the models served here being text-only.
"""

from __future__ import annotations

from dataclasses import dataclass

from tuneforge.serving.protocol import ApiError, ChatMessage, ContentPart
from tuneforge.serving.tools import function_message


@dataclass(frozen=True)
class Conversation:
    """What the engine's `chat` takes.

    Attributes:
        messages: `{"role", "content"}` turns with the engine's roles, ending with a prompt turn.
        system: The system prompt, or None for the template's default.
    """

    messages: list[dict[str, str]]
    system: str | None


def message_text(content: str | list[ContentPart] | None, param: str) -> str:
    """The text of a message's content (a string or an array of text parts).

    Raises:
        ApiError: the content is missing or holds a part that is not text.
    """
    if content is None:
        raise ApiError(400, f"{param} is required for this message", param)
    if isinstance(content, str):
        return content
    texts = []
    for index, part in enumerate(content):
        where = f"{param}[{index}]"
        if part.type != "text":
            raise ApiError(
                400,
                f"{where} has type {part.type!r}: only text content is supported, this server "
                "runs a text-only model",
                where,
                "unsupported_content",
            )
        if part.text is None:
            raise ApiError(400, f"{where} is a text part without `text`", f"{where}.text")
        texts.append(part.text)
    return "\n".join(texts)


def _system_prompt(messages: list[ChatMessage]) -> tuple[str | None, int]:
    """The leading system/developer messages joined, and how many there were."""
    count = 0
    while count < len(messages) and messages[count].role in ("system", "developer"):
        count += 1
    if count == 0:
        return None, 0
    texts = [message_text(messages[i].content, f"messages[{i}].content") for i in range(count)]
    return "\n".join(texts), count


def _turn(message: ChatMessage, index: int) -> dict[str, str]:
    param = f"messages[{index}]"
    if message.role == "assistant" and message.tool_calls:
        # Text beside the calls is not kept: the template's function slot renders calls only.
        return {
            "role": "function",
            "content": function_message(message.tool_calls, f"{param}.tool_calls"),
        }
    if message.role == "assistant" and message.content is None:
        raise ApiError(400, f"{param} is an assistant message without content or tool_calls", param)
    role = {"user": "user", "assistant": "assistant", "tool": "observation"}[message.role]
    return {"role": role, "content": message_text(message.content, f"{param}.content")}


def _check_order(turns: list[tuple[int, dict[str, str]]]) -> None:
    """Turns must alternate prompt (user/observation) and response, starting and ending with a
    prompt; a tool result must answer an assistant turn that called tools."""
    if not turns:
        raise ApiError(400, "messages hold only system messages; add a user message", "messages")
    for position, (index, turn) in enumerate(turns):
        param = f"messages[{index}].role"
        previous = turns[position - 1][1]["role"] if position else None
        if turn["role"] == "observation" and previous != "function":
            raise ApiError(
                400,
                f"messages[{index}] is a tool message that does not follow an assistant message "
                "with tool_calls",
                param,
            )
        if (turn["role"] in ("user", "observation")) != (position % 2 == 0):
            raise ApiError(
                400,
                f"messages[{index}] breaks the turn order: after the system messages, messages "
                "must alternate user (or tool) and assistant, starting with a user message "
                "(merge consecutive user messages into one)",
                param,
            )
    last_index, last = turns[-1]
    if last["role"] not in ("user", "observation"):
        raise ApiError(
            400,
            f"the last message (messages[{last_index}]) must be from the user or a tool, "
            "not the assistant: the server generates the next assistant message",
            f"messages[{last_index}].role",
        )


def to_conversation(messages: list[ChatMessage]) -> Conversation:
    """Map OpenAI messages onto the engine's conversation.

    Args:
        messages: The request's messages (at least one).

    Returns:
        The system prompt and the engine's turns.

    Raises:
        ApiError: a system message after the first turn, a non-text part, a message without
            content, turns that do not alternate, or a last message not from the user or a tool.
    """
    system, start = _system_prompt(messages)
    turns: list[tuple[int, dict[str, str]]] = []
    for index in range(start, len(messages)):
        message = messages[index]
        if message.role in ("system", "developer"):
            raise ApiError(
                400,
                f"messages[{index}] is a {message.role} message after the conversation started: "
                "system messages must come first",
                f"messages[{index}].role",
            )
        turn = _turn(message, index)
        if turns and turn["role"] == "observation" and turns[-1][1]["role"] == "observation":
            merged = turns[-1][1]["content"] + "\n" + turn["content"]
            turns[-1] = (turns[-1][0], {"role": "observation", "content": merged})
            continue
        turns.append((index, turn))
    _check_order(turns)
    return Conversation([turn for _, turn in turns], system)
