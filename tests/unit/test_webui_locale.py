"""The web workbench's data files: every string in both languages, the form's fields and
choices, and the dataset lists it offers (the model list: test_webui_models.py)."""

from __future__ import annotations

import re
import string
from pathlib import Path

import pytest

from tuneforge.webui import arguments
from tuneforge.webui.datasets import dataset_names, preview_rows
from tuneforge.webui.locale import LANGUAGES, FormError, strings, text
from tuneforge.webui.spec import choices_of, form_spec

REPO = Path(__file__).resolve().parents[2]
WEBUI = REPO / "src" / "tuneforge" / "webui"


def placeholders(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name}


def test_both_languages_have_the_same_entries_and_placeholders():
    english, chinese = strings("en"), strings("zh")
    assert set(english) == set(chinese)
    for name, entry in english.items():
        other = chinese[name]
        assert type(entry) is type(other), name
        if isinstance(entry, dict):
            assert set(entry) == set(other) and set(entry) <= {"label", "info"}, name
            pairs = [(entry[k], other[k]) for k in entry]
        else:
            pairs = [(entry, other)]
        for en, zh in pairs:
            assert isinstance(en, str) and en.strip() and isinstance(zh, str) and zh.strip(), name
            assert placeholders(en) == placeholders(zh), name


def test_every_string_the_code_asks_for_exists():
    """Fields, panels, and every message quoted in the webui modules (the page's components
    are checked against the locales in test_webui_app.py)."""
    spec = form_spec()
    wanted = set(spec.fields) | set(spec.panels)
    for module in WEBUI.glob("*.py"):
        source = module.read_text()
        wanted |= set(re.findall(r'"((?:msg|what)_[a-z_]+)"', source))
    for lang in LANGUAGES:
        missing = sorted(wanted - set(strings(lang)))
        assert not missing, (lang, missing)


def test_form_errors_are_told_in_the_page_language():
    error = FormError("msg_path_missing", what="what_dataset_dir", path="/x")
    assert str(error) == "Dataset dir /x does not exist."
    assert error.message("zh") == "数据目录 /x 不存在。"
    assert text("fr", "start_btn") == "Start"  # an unknown language falls back to English


def test_form_fields_are_well_formed():
    spec = form_spec()
    laid_out = {name for part in spec.layout for name in spec.names(part)}
    placed_by_code = {"output_dir", "output_path", "args_path", "args_outside"}
    assert laid_out | placed_by_code == set(spec.fields)
    for field in spec.fields.values():
        assert field.widget in (
            "dropdown",
            "multiselect",
            "textbox",
            "number",
            "slider",
            "checkbox",
        )
        assert field.type in ("str", "int", "float", "list"), field.name
        assert set(field.requires) <= set(field.choices), field.name
        choices = choices_of(field)
        if field.widget == "dropdown" and not field.custom:
            assert str(field.default) in choices, field.name
    for panel in spec.panels.values():
        assert set(panel.when) <= set(spec.fields)


def test_choices_that_need_a_package_are_offered_only_when_it_is_installed():
    acceleration = form_spec().fields["acceleration"]
    assert choices_of(acceleration, lambda module: False) == ["auto", "sdpa"]
    every = choices_of(acceleration, lambda module: True)
    assert every == ["auto", "sdpa", "flashattn2", "liger_kernel", "unsloth"]
    assert set(every) == set(arguments.ACCELERATION)
    assert "cosine" in choices_of(form_spec().fields["lr_scheduler_type"])
    assert set(choices_of(form_spec().fields["compute_type"])) == set(arguments.COMPUTE_TYPE)


@pytest.mark.parametrize(
    ("stage", "expected"),
    [
        ("sft", {"identity", "alpaca_demo", "sharegpt_demo", "tool_demo", "pretrain_demo"}),
        ("dpo", {"dpo_demo"}),
        ("rm", {"dpo_demo"}),
        ("kto", {"kto_demo"}),
    ],
)
def test_datasets_offered_fit_the_stage(stage, expected):
    names = set(dataset_names(str(REPO / "data"), stage))
    assert expected <= names
    if stage != "sft":
        assert names == expected
    assert "dpo_demo" not in dataset_names(str(REPO / "data"), "pt")
    assert dataset_names("/no/such/dir", stage) == []


def test_preview_rows_are_the_first_rows_of_the_files():
    preview = preview_rows(str(REPO / "data"), ["identity", "dpo_demo"], count=2)
    assert len(preview["identity"]) == 2 and set(preview["identity"][0]) >= {
        "instruction",
        "output",
    }
    assert set(preview["dpo_demo"][0]) >= {"conversations", "chosen", "rejected"}
    with pytest.raises(FormError, match="Pick at least one dataset"):
        preview_rows(str(REPO / "data"), [])
    with pytest.raises(FormError, match="No dataset_info.json"):
        preview_rows("/no/such/dir", ["identity"])
