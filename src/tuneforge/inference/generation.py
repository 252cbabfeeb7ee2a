"""Generation settings of one request, and the text side of stopping.

A request's settings are the config's `generation` section (plus `default_system` and
`enable_thinking` from `data`) overridden by the call's keyword arguments, which use
LLaMA-Factory's names. `TextAssembler` turns generated token ids into text incrementally, cuts
the text at the first stop string and holds back any tail that may still become one, so that a
streamed answer joins to exactly the text a non-streamed call returns.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tuneforge.config.fields import coerce
from tuneforge.errors import ConfigError
from tuneforge.utils.suggest import did_you_mean

if TYPE_CHECKING:
    from tuneforge.config.loader import Config

# key -> type, for the keys a call may override
GENERATION_KEYS: dict[str, Any] = {
    "do_sample": bool,
    "temperature": float,
    "top_p": float,
    "top_k": int,
    "num_beams": int,
    "max_new_tokens": int | None,
    "max_length": int | None,
    "repetition_penalty": float,
    "length_penalty": float,
    "skip_special_tokens": bool,
    "num_return_sequences": int,
    "stop": list[str],
    "enable_thinking": bool | None,
    "default_system": str | None,
}
ALIASES = {"n": "num_return_sequences"}  # OpenAI's name for it
REPLACEMENT_CHAR = "\ufffd"  # what a decoder shows for an incomplete UTF-8 sequence


@dataclass(frozen=True)
class GenerationSettings:
    """Everything that shapes one generation call (see GENERATION_KEYS)."""

    do_sample: bool
    temperature: float
    top_p: float
    top_k: int
    num_beams: int
    max_new_tokens: int | None
    max_length: int | None
    repetition_penalty: float
    length_penalty: float
    skip_special_tokens: bool
    num_return_sequences: int = 1
    stop: tuple[str, ...] = ()
    enable_thinking: bool | None = None
    default_system: str | None = None

    def token_budget(self, prompt_tokens: int) -> int:
        """New tokens this request may generate after a prompt of `prompt_tokens` tokens."""
        if self.max_new_tokens:
            return self.max_new_tokens
        budget = (self.max_length or 0) - prompt_tokens
        if budget <= 0:
            raise ConfigError(
                f"the prompt has {prompt_tokens} tokens, which leaves nothing to generate under "
                f"`max_length: {self.max_length}`; raise max_length or set max_new_tokens."
            )
        return budget


def resolve_generation(config: Config, overrides: Mapping[str, Any]) -> GenerationSettings:
    """The settings of one call: the config's values with `overrides` applied.

    LLaMA-Factory's rules hold: `max_new_tokens` wins over `max_length` (a call that sets only
    `max_length` drops the config's `max_new_tokens`), and a temperature of 0 means greedy.

    Raises:
        ConfigError: a key is unknown, or a value has the wrong type or range.
    """
    values = _defaults(config)
    for name, value in overrides.items():
        key = ALIASES.get(name, name)
        if key not in GENERATION_KEYS:
            raise ConfigError(
                f"unknown generation key `{name}`.{did_you_mean(name, [*GENERATION_KEYS])} "
                f"Valid keys: {', '.join(GENERATION_KEYS)}."
            )
        if value is None and key in ("max_new_tokens", "max_length", "stop"):
            continue  # an explicit None (e.g. an API's optional field) keeps the default
        if key == "stop" and isinstance(value, str):
            value = [value]
        values[key] = coerce(key, value, GENERATION_KEYS[key])
    if "max_length" in overrides and "max_new_tokens" not in overrides and values["max_length"]:
        values["max_new_tokens"] = None
    if values["temperature"] == 0:
        values["do_sample"] = False
    values["stop"] = tuple(word for word in values["stop"] if word)
    settings = GenerationSettings(**values)
    _check_ranges(settings)
    return settings


def _defaults(config: Config) -> dict[str, Any]:
    generation = dataclasses.asdict(config.generation)
    if generation["max_new_tokens"] <= 0:
        generation["max_new_tokens"] = None
    return {
        **generation,
        "num_return_sequences": 1,
        "stop": (),
        "enable_thinking": config.data.enable_thinking,
        "default_system": config.data.default_system,
    }


def _check_ranges(settings: GenerationSettings) -> None:
    rules = [
        ("temperature", settings.temperature >= 0, "must be >= 0"),
        ("top_p", 0 < settings.top_p <= 1, "must be in (0, 1]"),
        ("top_k", settings.top_k >= 0, "must be >= 0 (0 turns top-k off)"),
        ("num_beams", settings.num_beams >= 1, "must be >= 1"),
        ("num_return_sequences", settings.num_return_sequences >= 1, "must be >= 1"),
        ("repetition_penalty", settings.repetition_penalty > 0, "must be > 0"),
        ("max_new_tokens", (settings.max_new_tokens or 1) >= 1, "must be >= 1"),
    ]
    for name, ok, rule in rules:
        if not ok:
            raise ConfigError(f"generation key `{name}` {rule}, got {getattr(settings, name)}.")
    if settings.max_new_tokens is None and not settings.max_length:
        raise ConfigError("set `max_new_tokens` or `max_length` to bound the answer's length.")
    if settings.num_beams > 1 and settings.num_return_sequences > settings.num_beams:
        raise ConfigError(
            f"beam search returns at most num_beams ({settings.num_beams}) answers, "
            f"but {settings.num_return_sequences} were asked for."
        )


class TextAssembler:
    """Decodes a growing list of token ids into text, stopping at the first stop string.

    `add(token)` returns the text that is now final: text that cannot change with later tokens
    (no incomplete UTF-8 character) and cannot be the start of a stop string. After a stop
    string appears, `stopped` is True and the text ends just before it.
    """

    def __init__(self, tokenizer: Any, stop: Sequence[str], skip_special_tokens: bool) -> None:
        self.tokenizer = tokenizer
        self.stop = tuple(stop)
        self.skip_special_tokens = skip_special_tokens
        self.ids: list[int] = []
        self.text = ""  # final text so far (what was returned)
        self.stopped = False

    def add(self, token: int) -> str:
        """Takes one token; returns the newly final text ("" when nothing is final yet)."""
        if self.stopped:
            return ""
        self.ids.append(token)
        decoded = self.tokenizer.decode(self.ids, skip_special_tokens=self.skip_special_tokens)
        cut = self._first_stop(decoded)
        if cut is not None:
            self.stopped = True
            return self._advance(decoded[:cut])
        end = len(decoded) - self._held_back(decoded)
        return self._advance(decoded[:end])

    def finish(self) -> str:
        """The text still held back once generation is over."""
        if self.stopped:
            return ""
        decoded = self.tokenizer.decode(self.ids, skip_special_tokens=self.skip_special_tokens)
        return self._advance(decoded)

    def _advance(self, final: str) -> str:
        if len(final) <= len(self.text) or not final.startswith(self.text):
            return ""  # decoding of a longer prefix changed earlier text: wait for more
        delta, self.text = final[len(self.text) :], final
        return delta

    def _first_stop(self, text: str) -> int | None:
        found = [index for word in self.stop if (index := text.find(word)) >= 0]
        return min(found) if found else None

    def _held_back(self, text: str) -> int:
        """Characters at the end of `text` that may still change or start a stop string."""
        if text.endswith(REPLACEMENT_CHAR):
            return len(text) - len(text.rstrip(REPLACEMENT_CHAR))
        longest = 0
        for word in self.stop:
            for size in range(min(len(word) - 1, len(text)), longest, -1):
                if text.endswith(word[:size]):
                    longest = size
                    break
        return longest


def assemble(
    tokenizer: Any, ids: Sequence[int], settings: GenerationSettings
) -> tuple[str, int, bool]:
    """Text of generated `ids` cut at the first stop string, the tokens it took, and whether a
    stop string ended it."""
    assembler = TextAssembler(tokenizer, settings.stop, settings.skip_special_tokens)
    for token in ids:
        assembler.add(token)
        if assembler.stopped:
            break
    assembler.finish()
    return assembler.text, len(assembler.ids), assembler.stopped
