"""The one internal example type every dataset format is normalised into."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Role = Literal["user", "assistant", "observation", "function"]
"""`function` is an assistant turn that calls tools (its content is the calls as JSON);
`observation` is a tool result, on the prompt side like a user turn."""

PROMPT_ROLES: frozenset[str] = frozenset({"user", "observation"})
RESPONSE_ROLES: frozenset[str] = frozenset({"assistant", "function"})


@dataclass(frozen=True)
class Message:
    role: Role
    content: str


@dataclass(frozen=True)
class Example:
    """One normalised training example.

    `messages` alternates prompt turns (user/observation) and response turns
    (assistant/function). For supervised data it ends with the response to train on; for
    unsupervised (generation) data it ends with a prompt turn; for pretraining it holds a
    single user message whose content is the document.

    Preference pairs keep the chosen response as `messages[-1]` and the rejected one in
    `rejected`. KTO examples keep their single response as `messages[-1]` and whether it
    is desirable in `kto_tag`.
    """

    messages: tuple[Message, ...]
    system: str = ""
    tools: str = ""  # a JSON list of tool schemas, "" when there are none
    rejected: Message | None = None
    kto_tag: bool | None = None
    origin: str = ""  # "file.json row 12": where the example came from, for messages

    @property
    def chosen(self) -> Message:
        return self.messages[-1]
