"""Look templates up by name and bind them to a tokenizer."""

from __future__ import annotations

import difflib
import logging
from dataclasses import replace
from typing import Any

from tuneforge.errors import ConfigError
from tuneforge.templates.base import ChatTemplate, Template
from tuneforge.templates.catalog import ALL
from tuneforge.templates.tools import get_tool_format

logger = logging.getLogger("tuneforge")


def _build(templates: tuple[Template, ...]) -> dict[str, Template]:
    registry: dict[str, Template] = {}
    for template in templates:
        if template.name in registry or template.name == "auto":
            raise ValueError(f"duplicate template name {template.name!r}")
        registry[template.name] = template
    return registry


TEMPLATES: dict[str, Template] = _build(ALL)
"""Named templates as declared (tokens unbound); use `get_template` to render with one."""


def template_names() -> list[str]:
    """Every name `get_template` accepts, `auto` included, sorted."""
    return sorted([*TEMPLATES, "auto"])


# LLaMA-Factory 0.9.5's multimodal templates: those data/template.py registers with an
# mm_plugin (images, video or audio). A name here that tuneforge has (as a text template)
# still works; the others are refused as multimodal rather than matched to a text name.
MULTIMODAL_TEMPLATES = frozenset(
    {
        "dots_ocr", "ernie_vl", "gemma3", "gemma3n", "gemma4", "gemma4n", "glm4v", "glm4_5v",
        "glm_ocr", "granite3_vision", "intern_vl", "intern_s1", "keye_vl", "kimi_vl", "lfm2_vl",
        "llama4", "mllama", "llava", "llava_next", "llava_next_llama3", "llava_next_mistral",
        "llava_next_qwen", "llava_next_yi", "llava_next_video", "llava_next_video_mistral",
        "llava_next_video_yi", "mimo_vl", "minicpm_v", "minicpm_v_4_6", "minicpm_o",
        "mistral_small", "ministral3", "paligemma", "paligemma_chat", "pixtral", "qwen2_audio",
        "qwen2_omni", "qwen3_omni", "qwen3_omni_nothink", "qwen2_vl", "qwen3_vl",
        "qwen3_vl_nothink", "qwen3_5", "qwen3_5_nothink", "qwen3_6", "video_llava", "yi_vl",
        "youtu_vl",
    }
)  # fmt: skip


def _unknown(name: str) -> ConfigError:
    if name in MULTIMODAL_TEMPLATES:
        return ConfigError(
            f"`template: {name}` is one of LLaMA-Factory's multimodal templates (with an "
            "image, video or audio plugin), and tuneforge does not support multimodal templates "
            "yet: it has text templates only. Train a text model, with its text template."
        )
    names = template_names()
    near = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
    hint = f" Did you mean {' or '.join(repr(n) for n in near)}?" if near else ""
    return ConfigError(f"unknown template {name!r}.{hint} Valid templates: {', '.join(names)}.")


def get_template(
    name: str,
    tokenizer: Any = None,
    *,
    default_system: str | None = None,
    tool_format: str | None = None,
    enable_thinking: bool | None = None,
    preserve_thinking: bool | None = None,
) -> ChatTemplate:
    """Return a template ready to render, its bos/eos resolved from the tokenizer.

    Args:
        name: A LLaMA-Factory template name, or "auto" to render through the tokenizer's own
            chat_template.
        tokenizer: Supplies `bos_token` / `eos_token` (any object with those attributes). Without
            it the family's own tokens are used; a generic template (`default`, `alpaca`,
            `vicuna`) then raises when it needs one. Required for "auto".
        default_system: Replaces the template's default system prompt (LF's `default_system`).
        tool_format: Replaces the template's tool format (LF's `tool_format`).
        enable_thinking: Replaces the template's thinking default (LF's `enable_thinking`).
        preserve_thinking: Reasoning templates keep the thoughts of history turns (LF's
            `preserve_thinking`); None keeps the template's setting.

    Returns:
        A `Template` (or an `AutoTemplate` for "auto").

    Raises:
        ConfigError: the name or the tool format is unknown, or "auto" lacks a usable tokenizer.
    """
    if name == "auto":
        from tuneforge.templates.auto import AutoTemplate

        if preserve_thinking:
            raise ConfigError(
                "`preserve_thinking` needs a named template: `template: auto` renders through "
                "the tokenizer's own chat_template, which decides by itself whether past turns "
                "keep their thoughts. Set `template` to the model's named template (e.g. qwen3)."
            )
        if tool_format is not None:
            get_tool_format(tool_format)  # fail early on an unknown name
        return AutoTemplate(
            tokenizer,
            default_system=default_system or "",
            enable_thinking=enable_thinking,
            tool_format=tool_format,
        )
    if name not in TEMPLATES:
        raise _unknown(name)
    template = TEMPLATES[name]
    changes: dict[str, Any] = {}
    if default_system is not None:
        changes["default_system"] = default_system
    if tool_format is not None:
        get_tool_format(tool_format)  # fail early on an unknown name
        changes["tool_format_name"] = tool_format
    if enable_thinking is not None:
        changes["enable_thinking"] = enable_thinking
    if preserve_thinking is not None:
        changes["preserve_thinking"] = preserve_thinking
    if changes:
        template = replace(template, **changes)
    if tokenizer is None:
        return template.with_tokens(template.bos_token, template.eos_token)
    # A tokenizer without a bos renders the bos slot empty, as LLaMA-Factory does.
    bos = tokenizer.bos_token or ""
    return template.with_tokens(bos, tokenizer.eos_token or template.eos_token)


def all_special_tokens() -> tuple[str, ...]:
    """The union of every template's special tokens, in a stable order.

    A tiny test tokenizer adds these so that every template's markers are single tokens.
    """
    words: dict[str, None] = {}
    for template in TEMPLATES.values():
        words.update(dict.fromkeys(template.special_tokens))
    return tuple(words)


def template_for(data: Any, tokenizer: Any) -> ChatTemplate:
    """The template a config's data section asks for, bound to `tokenizer`.

    Without a `template` key, LLaMA-Factory's rule applies: the tokenizer's own chat_template
    (`auto`) when it has one, else `empty` (plain text, as for pretraining).
    """
    name = data.template
    if name is None:
        has_own = isinstance(getattr(tokenizer, "chat_template", None), str)
        name = "auto" if has_own else "empty"
        logger.warning(
            "No `template` set: using `%s` (%s).",
            name,
            "the tokenizer's own chat_template" if has_own else "no chat template",
        )
    return get_template(
        name,
        tokenizer,
        default_system=data.default_system,
        tool_format=data.tool_format,
        enable_thinking=data.enable_thinking,
        preserve_thinking=data.preserve_thinking,
    )
