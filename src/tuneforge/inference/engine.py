"""The inference Engine interface every front end uses (chat CLI, web chat, API).

An engine renders a conversation with the project's template (so training and inference see
the same text), generates, and returns answers with their stop reason and token counts.

Generation is asynchronous underneath: `prepare` renders, tokenizes and checks a request (it
raises a UserError for a bad one), `submit` queues it without blocking and reports its text
pieces and answers to a listener, from the engine's own thread, as `Piece`, `Done` and `Failed`
events. The Hugging Face engine owns its model in one worker thread that decodes the waiting
requests together (`inference/scheduler.py`); vLLM batches by itself. The synchronous `chat` and
`stream_chat` wait on those events, so any thread may call them, and the async API awaits them
through an asyncio queue; no caller ever holds a lock while a model generates.

`Limits` bounds what an engine holds: `max_concurrent` requests decoding at once and
`max_queue` waiting; `submit` refuses more at once with `EngineBusy` (the API's 429).
"""

from __future__ import annotations

import abc
import queue
import threading
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

from tuneforge.errors import ConfigError, DataError, NotAvailableError
from tuneforge.inference.generation import GenerationSettings, resolve_generation

if TYPE_CHECKING:
    from tuneforge.config.loader import Config

Messages = Sequence[Mapping[str, str]]
RETRY_AFTER_SECONDS = 1
"""What a refused request is told to wait before trying again (`Retry-After`)."""


@dataclass(frozen=True)
class Response:
    """One generated answer.

    Attributes:
        text: The decoded completion, stop words removed.
        prompt_tokens: Tokens of the rendered prompt.
        completion_tokens: Tokens generated for this answer (a stop token included).
        finish_reason: "stop" (a stop word or EOS ended it) or "length" (the token budget did,
            or the engine stopped it early because it is shutting down).
    """

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: Literal["stop", "length"]


@dataclass(frozen=True)
class Prompt:
    """A checked request, ready to generate.

    Attributes:
        ids: The rendered prompt's token ids.
        settings: Its generation settings (`settings.num_return_sequences` answers).
        budget: The most new tokens each answer may have (within the model's context).
    """

    ids: list[int]
    settings: GenerationSettings
    budget: int

    @property
    def n(self) -> int:
        """How many answers the request asks for."""
        return self.settings.num_return_sequences


@dataclass(frozen=True)
class Piece:
    """Text of answer `index` that is now final (no stop string can still remove it)."""

    index: int
    text: str


@dataclass(frozen=True)
class Done:
    """Answer `index` is complete."""

    index: int
    response: Response


@dataclass(frozen=True)
class Failed:
    """The request failed; no further event follows."""

    error: BaseException


Event = Piece | Done | Failed
Listener = Callable[[Event], None]
"""Takes a request's events, in order, on the engine's thread: it must not block."""


class Ticket(Protocol):
    """A submitted request."""

    def cancel(self) -> object:
        """Stop generating: the request frees its place at its next token and reports nothing
        more. Harmless once it has finished."""


@dataclass(frozen=True)
class Limits:
    """How many requests an engine holds at once.

    Attributes:
        max_concurrent: Requests decoding at the same time (for the Hugging Face engine, the
            most requests in one batch; each brings `n` rows).
        max_queue: Requests waiting for a place; beyond both, `submit` raises EngineBusy.
    """

    max_concurrent: int = 16
    max_queue: int = 64


class EngineBusy(Exception):
    """Every decoding place and queue place is taken; try again after `retry_after` seconds."""

    def __init__(self, limits: Limits) -> None:
        super().__init__(
            f"The server is busy: {limits.max_concurrent} requests are being answered and "
            f"{limits.max_queue} are waiting (API_MAX_CONCURRENT, API_MAX_QUEUE). "
            f"Retry in {RETRY_AFTER_SECONDS} s."
        )
        self.retry_after = RETRY_AFTER_SECONDS


class EngineStopped(Exception):
    """The engine is shutting down and takes no new request."""

    def __init__(self) -> None:
        super().__init__("The server is shutting down and takes no new requests.")
        self.retry_after = RETRY_AFTER_SECONDS


class ContextLengthError(DataError):
    """A prompt (with the answer asked for) does not fit in the model's context.

    Attributes:
        limit: The model's context in tokens.
        prompt_tokens: The rendered prompt's tokens.
        completion_tokens: The answer's tokens asked for, or None when the prompt alone is too
            long.
    """

    def __init__(self, limit: int, prompt_tokens: int, completion_tokens: int | None) -> None:
        if completion_tokens is None:
            asked = f"your messages resulted in {prompt_tokens} tokens"
            fix = "Please reduce the length of the messages."
        else:
            asked = (
                f"you requested {prompt_tokens + completion_tokens} tokens ({prompt_tokens} in "
                f"the messages, {completion_tokens} in the completion)"
            )
            fix = "Please reduce the length of the messages or completion."
        super().__init__(
            f"This model's maximum context length is {limit} tokens. However, {asked}. {fix}"
        )
        self.limit, self.prompt_tokens, self.completion_tokens = (
            limit,
            prompt_tokens,
            completion_tokens,
        )


class Capacity:
    """Counts the requests an engine holds against its Limits (thread-safe, never blocks)."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._held = 0
        self._stopped = False
        self._lock = threading.Lock()

    def acquire(self) -> None:
        """Take a place.

        Raises:
            EngineStopped: the engine is shutting down.
            EngineBusy: every place is taken.
        """
        with self._lock:
            self._check()
            self._held += 1

    def check(self) -> None:
        """Raise what `acquire` would raise now, without taking a place: a request that would
        be refused is refused before any work is spent on it (it may still be refused later)."""
        with self._lock:
            self._check()

    def _check(self) -> None:
        if self._stopped:
            raise EngineStopped()
        if self._held >= self.limits.max_concurrent + self.limits.max_queue:
            raise EngineBusy(self.limits)

    def release(self) -> None:
        """Give a place back."""
        with self._lock:
            self._held -= 1

    def stop(self) -> None:
        """Refuse every request from now on."""
        with self._lock:
            self._stopped = True

    @property
    def held(self) -> int:
        """Requests decoding or waiting now."""
        return self._held


class Engine(abc.ABC):
    """A loaded model that answers conversations.

    Attributes:
        template: The chat template bound to the tokenizer (`template.tool_format` parses
            tool calls out of an answer).
        is_reward_model: Whether the model has a value head, so that `get_scores` works.
        capacity: The requests it holds, against its Limits.
    """

    template: Any
    tokenizer: Any
    is_reward_model: bool = False

    def __init__(self, config: Config, limits: Limits | None = None) -> None:
        self.config = config
        self.capacity = Capacity(limits or Limits())

    # ---- the asynchronous core -------------------------------------------------------

    def prepare(
        self,
        messages: Messages,
        system: str | None = None,
        tools: str | None = None,
        exact_budget: bool = False,
        **generation: Any,
    ) -> Prompt:
        """Render, tokenize and check a conversation that ends with a user or observation turn.

        Args:
            messages: `{"role", "content"}` dicts; roles user, assistant, function (tool calls
                as JSON) and observation (a tool result).
            system: System prompt; None uses the template's (or `default_system`).
            tools: JSON list of tool schemas, or None.
            exact_budget: The token budget was asked for (the API's `max_tokens`): one that
                does not fit in the model's context is an error instead of being shortened.
            **generation: Generation keys overriding the config's for this call (see
                `inference.generation.GENERATION_KEYS`).

        Raises:
            ConfigError: an unknown generation key or a bad value.
            DataError: the messages do not alternate, do not end with a prompt turn, or hold
                text that is not valid Unicode.
            ContextLengthError: the prompt does not fit in the model's context.
        """
        settings = self.settings(generation)
        ids = self.encode(messages, system, tools, settings)
        return Prompt(ids, settings, self._budget(len(ids), settings, exact_budget))

    @abc.abstractmethod
    def submit(self, prompt: Prompt, listener: Listener) -> Ticket:
        """Queue a prompt's generation; returns at once.

        The listener then gets, for each answer `index` in `range(prompt.n)`, its `Piece`s and
        one `Done`; or a single `Failed`.

        Raises:
            EngineBusy: every place is taken (see Limits).
            EngineStopped: the engine is shutting down.
        """

    @property
    def context_length(self) -> int | None:
        """The most tokens a prompt and its answer may have together (None: unknown)."""
        return None

    def drain(self) -> None:
        """Stop taking requests; end the ones decoding at their next token (finish reason
        "length") and fail the waiting ones with EngineStopped. Returns at once."""
        self.capacity.stop()

    # ---- the synchronous front end ---------------------------------------------------

    def chat(
        self,
        messages: Messages,
        system: str | None = None,
        tools: str | None = None,
        **generation: Any,
    ) -> list[Response]:
        """Answers a conversation (see `prepare` for the arguments and errors).

        Returns:
            `num_return_sequences` answers.

        Raises:
            EngineBusy: the engine holds as many requests as its Limits allow.
        """
        prompt = self.prepare(messages, system, tools, **generation)
        events: queue.SimpleQueue[Event] = queue.SimpleQueue()
        ticket = self.submit(prompt, events.put)
        answers: dict[int, Response] = {}
        try:
            while len(answers) < prompt.n:
                event = _next_event(events)
                if isinstance(event, Failed):
                    raise event.error
                if isinstance(event, Done):
                    answers[event.index] = event.response
        finally:  # Ctrl-C while waiting: the engine stops generating
            if len(answers) < prompt.n:
                ticket.cancel()
        return [answers[index] for index in range(prompt.n)]

    def stream_chat(
        self,
        messages: Messages,
        system: str | None = None,
        tools: str | None = None,
        **generation: Any,
    ) -> Generator[str, None, Response]:
        """Like `chat` for one answer, yielding its text piece by piece.

        Arguments are checked and the request is queued when this is called, before the first
        piece; closing the iterator early stops the generation. The generator's return value
        (StopIteration.value) is the whole answer's Response, with its token counts and
        finish_reason.
        """
        prompt = self.prepare(messages, system, tools, **generation)
        if prompt.n != 1:
            raise ConfigError(
                "a streamed answer is a single answer: set num_return_sequences (n) to 1, "
                "or ask without streaming."
            )
        events: queue.SimpleQueue[Event] = queue.SimpleQueue()
        return _pieces(events, self.submit(prompt, events.put))

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
        """Stops generating and frees the model; the engine cannot be used afterwards."""

    # ---- shared by the engines ---------------------------------------------------------

    def settings(self, generation: Mapping[str, Any]) -> GenerationSettings:
        """The effective generation settings of one call."""
        return resolve_generation(self.config, generation)

    def encode(
        self, messages: Messages, system: str | None, tools: str | None, settings: Any
    ) -> list[int]:
        """The prompt's token ids."""
        prompt = self.render(messages, system, tools, settings)
        try:
            prompt.encode("utf-8")  # a lone surrogate cannot be tokenized
        except UnicodeEncodeError as error:
            raise DataError(
                f"the conversation holds text that is not valid Unicode ({error.reason}: "
                f"{error.object[error.start : error.end]!a}); send well-formed UTF-8."
            ) from None
        ids: list[int] = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        return ids

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

    def _budget(self, prompt_tokens: int, settings: GenerationSettings, exact: bool) -> int:
        limit = self.context_length
        if limit is not None and prompt_tokens >= limit:
            raise ContextLengthError(limit, prompt_tokens, None)
        budget = settings.token_budget(prompt_tokens)
        if limit is not None and prompt_tokens + budget > limit:
            if exact:
                raise ContextLengthError(limit, prompt_tokens, budget)
            budget = limit - prompt_tokens  # the answer ends where the context does
        return budget


def _next_event(events: queue.SimpleQueue[Event]) -> Event:
    # A timed wait, so that Ctrl-C reaches a main thread that waits here.
    while True:
        try:
            return events.get(timeout=0.5)
        except queue.Empty:
            continue


def _pieces(events: queue.SimpleQueue[Event], ticket: Ticket) -> Generator[str, None, Response]:
    try:
        while True:
            event = _next_event(events)
            if isinstance(event, Piece):
                yield event.text
            elif isinstance(event, Done):
                return event.response
            else:
                raise event.error
    finally:  # the reader stopped early (closed, Ctrl-C): the engine stops generating
        ticket.cancel()


def load_engine(config: Config, limits: Limits | None = None) -> Engine:
    """The engine `config.model.infer_backend` names, with the config's model loaded.

    Args:
        config: The config whose model to serve.
        limits: Requests it holds at once (the API's API_MAX_CONCURRENT / API_MAX_QUEUE);
            None for the defaults.

    Raises:
        NotAvailableError: the backend (or its package) is not available here.
    """
    backend = config.model.infer_backend
    if backend == "huggingface":
        from tuneforge.inference.hf import HuggingFaceEngine

        return HuggingFaceEngine(config, limits)
    if backend == "vllm":
        from tuneforge.inference.vllm import VllmEngine

        return VllmEngine(config, limits)
    raise NotAvailableError(
        f"`infer_backend: {backend}` is not available in this version of tuneforge; "
        "use `infer_backend: huggingface` or `infer_backend: vllm`."
    )
