"""The inference Engine interface every front end uses (chat CLI, web chat, API).

An engine renders a conversation with the project's template (so training and inference see
the same text), generates, and returns answers with their stop reason and token counts.
Methods are synchronous and thread-safe; async front ends call them through a thread pool.
"""

from __future__ import annotations

import abc
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from tuneforge.errors import ConfigError, NotAvailableError
from tuneforge.inference.generation import GenerationSettings, resolve_generation

if TYPE_CHECKING:
    from tuneforge.config.loader import Config

Messages = Sequence[Mapping[str, str]]


@dataclass(frozen=True)
class Response:
    """One generated answer.

    Attributes:
        text: The decoded completion, stop words removed.
        prompt_tokens: Tokens of the rendered prompt.
        completion_tokens: Tokens generated for this answer (a stop token included).
        finish_reason: "stop" (a stop word or EOS ended it) or "length" (the token budget did).
    """

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: Literal["stop", "length"]


class Engine(abc.ABC):
    """A loaded model that answers conversations.

    Attributes:
        template: The chat template bound to the tokenizer (`template.tool_format` parses
            tool calls out of an answer).
        is_reward_model: Whether the model has a value head, so that `get_scores` works.
    """

    template: Any
    tokenizer: Any
    is_reward_model: bool = False

    def __init__(self, config: Config) -> None:
        self.config = config

    def chat(
        self,
        messages: Messages,
        system: str | None = None,
        tools: str | None = None,
        **generation: Any,
    ) -> list[Response]:
        """Answers a conversation that ends with a user or observation turn.

        Args:
            messages: `{"role", "content"}` dicts; roles user, assistant, function (tool calls
                as JSON) and observation (a tool result).
            system: System prompt; None uses the template's (or `default_system`).
            tools: JSON list of tool schemas, or None.
            **generation: Generation keys overriding the config's for this call (see
                `inference.generation.GENERATION_KEYS`).

        Returns:
            `num_return_sequences` answers.

        Raises:
            ConfigError: an unknown generation key or a bad value.
            DataError: the messages do not alternate or do not end with a prompt turn.
        """
        settings = self.settings(generation)
        return self._answers(self.encode(messages, system, tools, settings), settings)

    def stream_chat(
        self,
        messages: Messages,
        system: str | None = None,
        tools: str | None = None,
        **generation: Any,
    ) -> Generator[str, None, Response]:
        """Like `chat` for one answer, yielding its text piece by piece.

        Arguments are checked when this is called, before the first piece; closing the
        iterator early stops the generation. The generator's return value (StopIteration.value)
        is the whole answer's Response, with its token counts and finish_reason.
        """
        settings = self.settings(generation)
        if settings.num_return_sequences != 1:
            raise ConfigError(
                "a streamed answer is a single answer: set num_return_sequences (n) to 1, "
                "or ask without streaming."
            )
        return self._stream(self.encode(messages, system, tools, settings), settings)

    @abc.abstractmethod
    def _answers(self, prompt_ids: list[int], settings: GenerationSettings) -> list[Response]:
        """`settings.num_return_sequences` answers to an encoded prompt."""

    @abc.abstractmethod
    def _stream(
        self, prompt_ids: list[int], settings: GenerationSettings
    ) -> Generator[str, None, Response]:
        """Text pieces of one answer to an encoded prompt; returns its Response."""

    def get_scores(self, texts: Sequence[str], **kwargs: Any) -> list[float]:
        """Reward-model scores, one per text (the value head at each text's last token).

        Raises:
            ConfigError: the model has no value head.
        """
        raise ConfigError(
            f"{self.config.model.model_name_or_path} has no value head (value_head.safetensors), "
            "so it cannot score texts; load a reward model trained with `stage: rm`."
        )

    @abc.abstractmethod
    def close(self) -> None:
        """Frees the model; the engine cannot be used afterwards."""

    # ---- shared by the engines ---------------------------------------------------------

    def settings(self, generation: Mapping[str, Any]) -> GenerationSettings:
        """The effective generation settings of one call."""
        return resolve_generation(self.config, generation)

    def encode(
        self, messages: Messages, system: str | None, tools: str | None, settings: Any
    ) -> list[int]:
        """The prompt's token ids."""
        prompt = self.render(messages, system, tools, settings)
        return self.tokenizer(prompt, add_special_tokens=False)["input_ids"]

    def render(
        self,
        messages: Messages,
        system: str | None,
        tools: str | None,
        settings: GenerationSettings,
    ) -> str:
        """The prompt text for `messages`, ending with the generation prompt."""
        return self.template.render_prompt(
            messages,
            system=system or settings.default_system,
            tools=tools or "",
            enable_thinking=settings.enable_thinking,
        )


def load_engine(config: Config) -> Engine:
    """The engine `config.model.infer_backend` names, with the config's model loaded.

    Raises:
        NotAvailableError: the backend (or its package) is not available here.
    """
    backend = config.model.infer_backend
    if backend == "huggingface":
        from tuneforge.inference.hf import HuggingFaceEngine

        return HuggingFaceEngine(config)
    if backend == "vllm":
        from tuneforge.inference.vllm import VllmEngine

        return VllmEngine(config)
    raise NotAvailableError(
        f"`infer_backend: {backend}` is not available in this version of tuneforge; "
        "use `infer_backend: huggingface` or `infer_backend: vllm`."
    )
