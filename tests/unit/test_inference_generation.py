"""Per-call generation settings and the text side of stopping (no model involved)."""

from __future__ import annotations

import pytest

from tuneforge.config.loader import build_config
from tuneforge.errors import ConfigError
from tuneforge.inference.generation import TextAssembler, resolve_generation


class ByteTokenizer:
    """Each token is a byte string; decoding joins them as UTF-8, like a byte-level BPE."""

    def __init__(self, pieces: list[bytes]) -> None:
        self.pieces = pieces

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return b"".join(self.pieces[i] for i in ids).decode("utf-8", errors="replace")


def feed(pieces: list[bytes], stop: list[str]) -> tuple[list[str], str, TextAssembler]:
    assembler = TextAssembler(ByteTokenizer(pieces), stop, skip_special_tokens=True)
    deltas = [assembler.add(index) for index in range(len(pieces))]
    return deltas, assembler.finish(), assembler


def test_text_that_may_start_a_stop_string_is_held_back():
    deltas, tail, assembler = feed([b"x", b"a", b"b", b"d"], ["abc"])
    assert deltas == ["x", "", "", "abd"]
    assert (tail, assembler.text, assembler.stopped) == ("", "xabd", False)


def test_a_stop_string_ends_the_text_before_it():
    deltas, tail, assembler = feed([b"x", b"ab", b"cz", b"more"], ["abc"])
    assert deltas == ["x", "", "", ""]
    assert (tail, assembler.text, assembler.stopped) == ("", "x", True)
    assert len(assembler.ids) == 3  # the token that completed the stop string was generated


def test_the_earliest_stop_string_wins_and_held_text_is_released_at_the_end():
    _, _, assembler = feed([b"one, two, three"], ["three", "two"])
    assert assembler.text == "one, "
    deltas, tail, _ = feed([b"ok", b" th"], ["three"])
    assert deltas == ["ok", " "]  # only "th" may still become "three"
    assert tail == "th"


def test_an_incomplete_utf8_character_waits_for_its_last_byte():
    deltas, _, assembler = feed([b"caf", b"\xc3", b"\xa9!"], [])
    assert deltas == ["caf", "", "é!"]
    assert assembler.text == "café!"


def test_settings_come_from_the_config_and_the_call():
    config = build_config(
        {"temperature": 0.5, "max_new_tokens": 64, "default_system": "Be kind.", "top_k": 5}
    )
    settings = resolve_generation(config, {"n": 2, "stop": "END", "top_p": 0.9})
    assert settings.num_return_sequences == 2
    assert settings.stop == ("END",)
    assert (settings.temperature, settings.top_p, settings.top_k) == (0.5, 0.9, 5)
    assert settings.default_system == "Be kind."
    assert settings.enable_thinking is True
    assert settings.token_budget(prompt_tokens=10) == 64


def test_max_length_and_temperature_follow_llama_factory():
    config = build_config({})
    bounded = resolve_generation(config, {"max_length": 100})
    assert bounded.max_new_tokens is None
    assert bounded.token_budget(prompt_tokens=40) == 60
    both = resolve_generation(config, {"max_length": 100, "max_new_tokens": 7})
    assert both.token_budget(prompt_tokens=40) == 7
    assert resolve_generation(config, {"temperature": 0}).do_sample is False
    assert resolve_generation(config, {"max_new_tokens": None}).max_new_tokens == 1024


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"max_tokens": 5}, "unknown generation key `max_tokens`"),
        ({"top_p": 1.5}, "top_p"),
        ({"temperature": -1}, "temperature"),
        ({"num_beams": 0}, "num_beams"),
        ({"n": 0}, "num_return_sequences"),
        ({"do_sample": "maybe"}, "do_sample"),
        ({"num_beams": 2, "n": 4}, "at most num_beams"),
    ],
)
def test_bad_settings_are_refused(overrides, message):
    with pytest.raises(ConfigError, match=message):
        resolve_generation(build_config({}), overrides)
