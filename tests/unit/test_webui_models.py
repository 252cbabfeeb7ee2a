"""The web workbench's model list, read from the family table: every model of every
LLaMA-Factory group, its hub id, and the chat template a name or path suggests."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from tuneforge.models.families import model_groups
from tuneforge.templates.registry import template_names
from tuneforge.webui.models import hub_id, model_names, suggested_template
from tuneforge.webui.spec import choices_of, form_spec

REPO = Path(__file__).resolve().parents[2]

# display names that more than one group lists (the first group keeps them): none today
DUPLICATES: frozenset[str] = frozenset()


def _models() -> list[tuple[str, str, str]]:
    """(display name, hub id, template) of every model, group by group."""
    return [
        (name, hub, group.template)
        for group in model_groups()
        for name, hub in group.models.items()
    ]


def test_every_group_is_listed_in_the_table_order():
    assert len(model_groups()) == 79  # LLaMA-Factory 0.9.5's text model groups
    names = model_names()
    counts = Counter(name for name, _, _ in _models())
    assert {name for name, count in counts.items() if count > 1} == DUPLICATES
    assert len(names) == len(_models()) - sum(counts[name] - 1 for name in DUPLICATES)
    assert len(names) == len(set(names))
    first_seen = list(dict.fromkeys(name for name, _, _ in _models()))
    assert names == first_seen
    for group in model_groups():
        assert group.models, group.name
        assert set(group.models) <= set(names), group.name
    assert names[0] == next(iter(model_groups()[0].models))


def test_the_form_offers_the_list():
    assert choices_of(form_spec().fields["model_name"]) == model_names()


def test_hub_ids_resolve():
    for name, hub, _ in _models():
        assert "/" in hub and hub_id(name) == hub, name
    assert hub_id("Qwen2.5-7B-Instruct") == "Qwen/Qwen2.5-7B-Instruct"
    assert hub_id("x") is None and hub_id("") is None


def test_every_group_names_a_registered_template():
    known = set(template_names())
    for group in model_groups():
        assert group.template in known, (group.name, group.template)


def test_every_model_suggests_its_groups_template():
    known = set(template_names())
    for name, hub, template in _models():
        basename = hub.rsplit("/", 1)[-1]
        for text in (name, name.upper(), hub, hub.lower(), f"/models/{basename}/", basename):
            assert suggested_template(text) == template, text
        # a fine-tune named after its base model's hub id
        assert suggested_template(f"{basename}-ft") == template, basename
        assert template in known


@pytest.mark.parametrize(
    ("name", "template"),
    [
        ("Qwen3-8B", "qwen3"),
        ("Qwen2.5-7B-Instruct", "qwen"),
        ("qwen2.5-7b-instruct", "qwen"),
        ("Qwen/Qwen2.5-7B-Instruct", "qwen"),
        ("/models/Qwen2.5-7B-Instruct", "qwen"),
        ("/models/Qwen2.5-3B-finetuned/", "qwen"),
        ("qwen2.5-3b-custom", "qwen"),
        ("qwen3-4b-instruct-ft", "qwen3_nothink"),
        ("Meta-Llama-3-8B-Instruct", "llama3"),
        ("llama-3.2-1b-foo", "llama3"),
        ("Llama-3-8B-custom", "llama3"),  # llama-3 is not llama-30b (LLaMA, default)
        ("llama-7b-ft", "default"),
        ("gemma-2-2b-it-ft", "gemma2"),
        ("gemma-7b", "gemma"),
        ("mistral-7b-finetune", "mistral"),
        ("phi-4-ft", "phi4"),
        ("bloom-560m", "default"),
        ("BLOOM-560M", "default"),
        ("smollm2_360m_ft", "smollm2"),
        ("my-model", None),
        ("my-own-model", None),
        ("model", None),
        ("7b-model", None),
        ("", None),
    ],
)
def test_suggested_template(name, template):
    assert suggested_template(name) == template


def test_suggested_templates_are_registered():
    known = set(template_names())
    for text in ("qwen-foo", "deepseek-foo", "phi-foo", "yi-34b-ft", "llama-3.4-new"):
        assert suggested_template(text) in known, text


def test_the_old_model_list_is_gone():
    assert not (REPO / "src" / "tuneforge" / "webui" / "models.yaml").exists()
