"""Registry lookups, token binding, special tokens, and the package's import cost."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import FrozenInstanceError
from types import SimpleNamespace

import pytest

from tuneforge.data.example import Message
from tuneforge.errors import ConfigError
from tuneforge.templates import TEMPLATES, Template, TurnText, get_template
from tuneforge.templates.registry import _build, all_special_tokens

REQUIRED = [
    "default",
    "empty",
    "alpaca",
    "vicuna",
    "chatml",
    "qwen",
    "qwen3",
    "qwen3_nothink",
    "llama2",
    "llama3",
    "mistral",
    "gemma",
    "gemma2",
    "gemma3",
    "phi",
    "phi4",
    "glm4",
    "deepseek",
    "deepseek3",
    "deepseekr1",
    "yi",
    "zephyr",
    "falcon",
    "cohere",
    "openchat",
    "granite3",
    "smollm",
    "olmo",
]


def test_required_templates_exist() -> None:
    assert set(REQUIRED) <= set(TEMPLATES)


@pytest.mark.parametrize(
    ("name", "nearest"), [("qwen-3", "qwen3"), ("lama3", "llama3"), ("gemma-2", "gemma2")]
)
def test_unknown_name_lists_nearest_and_valid(name: str, nearest: str) -> None:
    with pytest.raises(ConfigError) as info:
        get_template(name)
    message = str(info.value)
    assert f"unknown template {name!r}" in message
    assert repr(nearest) in message.split("Valid templates")[0]
    assert "Valid templates: aeva, alpaca, auto, bailing" in message


def test_duplicate_name_raises() -> None:
    with pytest.raises(ValueError, match="duplicate template name 'x'"):
        _build((Template("x"), Template("x")))


def test_turntext_is_frozen() -> None:
    turn = TurnText("p", "r")
    with pytest.raises(FrozenInstanceError):
        turn.prompt = "q"  # type: ignore[misc]


def test_generic_template_needs_a_tokenizer() -> None:
    messages = [Message("user", "q"), Message("assistant", "a")]
    with pytest.raises(
        ConfigError,
        match=r"eos_token, which is unknown.*get_template\('default', tokenizer\)",
    ):
        get_template("default").render(messages)
    tok = SimpleNamespace(bos_token="<s>", eos_token="<|endoftext|>")
    assert get_template("default", tok).render(messages)[0].response == "a<|endoftext|>"


def test_binding_stop_words() -> None:
    qwen_base = SimpleNamespace(bos_token=None, eos_token="<|endoftext|>")
    qwen = get_template("qwen", qwen_base)
    assert (qwen.eos_token, qwen.stop_words, qwen.replace_eos) == (
        "<|im_end|>",
        ("<|im_end|>",),
        True,
    )
    assert get_template("yi", qwen_base).stop_words == ("<|im_end|>", "<|endoftext|>")
    assert get_template("glm4").stop_words == ("<|endoftext|>", "<|user|>", "<|observation|>")
    assert get_template("gemma2").stop_words == ("<end_of_turn>", "<eos>")
    assert get_template("llama2").stop_words == ("</s>",)
    assert get_template("granite3").stop_words == ("<|end_of_text|>",)


def test_stop_words_first_is_what_responses_end_with() -> None:
    messages = [Message("user", "q"), Message("assistant", "a")]
    tok = SimpleNamespace(bos_token="<s>", eos_token="</s>")
    for name in TEMPLATES:
        if name == "empty":  # raw concatenation: nothing ends a response
            continue
        if name == "openchat-3.6":  # LF's slot ends with the tokenizer's eos, its stop word is
            continue  # <|eot_id|>: they agree for a tokenizer whose eos is <|eot_id|>
        t = get_template(name, tok)
        assert t.render(messages)[-1].response.endswith(t.stop_words[0]), name


def test_tokenizer_without_bos_renders_bos_slot_empty() -> None:
    t = get_template("llama3", SimpleNamespace(bos_token=None, eos_token="<|eot_id|>"))
    assert t.render_prompt([Message("user", "q")]).startswith("<|start_header_id|>user")


def test_default_system_override() -> None:
    t = get_template("qwen", default_system="Be brief.")
    assert t.render_prompt([Message("user", "q")]).startswith(
        "<|im_start|>system\nBe brief.<|im_end|>"
    )


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_special_tokens_cover_markers(name: str) -> None:
    t = TEMPLATES[name]
    slot_text = "".join(
        s or ""
        for s in (
            t.prefix,
            t.system,
            t.user,
            t.observation,
            t.assistant_header,
            t.assistant,
            t.function,
            t.tools_slot,
            *t.thought_words,
        )
    )
    for marker in t.markers:
        assert marker in slot_text, f"{name}: marker {marker!r} never rendered"
    assert set(t.stop_words) <= set(t.special_tokens)
    assert set(t.special_tokens) <= set(all_special_tokens())


def test_all_special_tokens() -> None:
    tokens = all_special_tokens()
    assert len(tokens) == len(set(tokens))
    for token in (
        "<|im_start|>",
        "<|im_end|>",
        "<start_of_turn>",
        "<|eot_id|>",
        "<think>",
        "</think>",
        "[INST]",
    ):
        assert token in tokens


def test_import_is_light() -> None:
    code = (
        "import sys, tuneforge.templates as t\n"
        "conv = [{'role': 'user', 'content': 'q'}, {'role': 'assistant', 'content': 'a'}]\n"
        "t.get_template('qwen3').render(conv)\n"
        "t.get_template('llama3').chat_template\n"
        "heavy = {'torch', 'transformers'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
