"""The web workbench page as built (gradio Blocks, no server), its language switch, the saves
layout it lists runs from, and the `tuneforge webui` command without gradio."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tuneforge.cli.main import main
from tuneforge.webui.datasets import dataset_names
from tuneforge.webui.locale import strings
from tuneforge.webui.paths import Saves, folder_name, looks_like_hub_id

REPO = Path(__file__).resolve().parents[2]
ANY_SFT = dataset_names(str(REPO / "data"), "sft")


@pytest.fixture(scope="module")
def workbench(tmp_path_factory):
    from tuneforge.webui.app import create_app

    return create_app(tmp_path_factory.mktemp("saves"))


def test_every_component_text_exists_in_both_languages(workbench):
    page = workbench.page
    entries = [entry for entry, _, _ in page._labelled]
    for lang in ("en", "zh"):
        assert not sorted(set(entries) - set(strings(lang))), lang
    updates = page.relabel("zh")
    assert len(updates) == len(page.labelled()) == len(entries)
    by_entry = dict(zip(entries, updates))
    assert by_entry["tab_train"]["label"] == "训练"
    assert by_entry["start_btn"]["value"] == "开始"
    assert by_entry["model_name_or_path"]["label"] == "模型路径"
    assert by_entry["model_name_or_path"]["info"] == "本地文件夹或 Hugging Face Hub ID。"
    assert by_entry["chat_query"]["label"] == "消息"  # the embedded chat block too


def test_the_page_opens_in_the_chosen_language(tmp_path):
    from tuneforge.webui.app import create_app

    page = create_app(tmp_path, lang="zh").page
    assert page["lang"].value == "zh"
    assert page["start_btn"].value == "开始" and page["dataset_dir"].label == "数据目录"


def test_the_page_has_every_field_of_the_form(workbench):
    from tuneforge.webui.spec import form_spec

    missing = set(form_spec().fields) - set(workbench.page.components)
    assert not missing
    page = workbench.page
    # only the panels of the default method (LoRA) and the always-open one show at first
    shown = {name for name in form_spec().panels if page[name].visible}
    assert shown == {"panel_lora", "panel_extra"}


def test_a_connecting_page_shows_the_training_job_of_the_server(tmp_path):
    from tuneforge.webui.app import opening_updates
    from tuneforge.webui.runner import JobRegistry

    fresh = opening_updates(JobRegistry(), str(REPO / "data"), "dpo", str(REPO / "data"))
    assert fresh["output_dir"]["value"].startswith("train_")
    assert fresh["dataset"] == {"choices": ["dpo_demo"]}
    assert "model_name_or_path" not in fresh

    registry = JobRegistry(program=(sys.executable, "-c", "pass"))
    config_text = (
        f"model_name_or_path: models/m\nstage: sft\ndataset_dir: {REPO / 'data'}\n"
        "dataset: identity\nfinetuning_type: lora\nadapter_name_or_path: saves/a\n"
        "output_dir: saves/m/lora/run\nbf16: true\n"
    )
    job = registry.start("train", "train", config_text, tmp_path, tmp_path)
    job.wait(timeout=60)
    restored = opening_updates(registry, "elsewhere", "dpo", "elsewhere")
    assert restored["model_name_or_path"]["value"] == "models/m"
    assert restored["checkpoint"]["value"] == ["saves/a"]
    # not a run of this server's saves folder: the path itself, as an explicit output path
    assert restored["output_path"]["value"] == "saves/m/lora/run"
    assert restored["output_dir"]["value"] == "run"
    ours = opening_updates(registry, "elsewhere", "dpo", "elsewhere", Saves(Path("saves")))
    assert ours["output_dir"]["value"] == "run" and ours["output_path"]["value"] == ""
    assert restored["compute_type"]["value"] == "bf16"
    assert restored["yaml_preview"]["value"] == config_text
    assert restored["command_preview"]["value"] == f"tuneforge train {tmp_path}/webui_train.yaml"
    # the datasets on offer are those of the job's dataset dir and stage
    assert restored["dataset"] == {"value": ["identity"], "choices": ANY_SFT}


def test_runs_are_listed_newest_first_and_only_when_they_hold_a_model(tmp_path):
    import os

    saves = Saves(tmp_path)
    folder = saves.method_dir("org/My Model", "lora")
    for age, name in enumerate(["new", "old"]):
        (folder / name).mkdir(parents=True)
        (folder / name / "adapter_config.json").write_text("{}")
        os.utime(folder / name, (1000 - age, 1000 - age))
    (folder / "crashed").mkdir()  # no weights: not a run to load
    assert folder == tmp_path / "My_Model" / "lora"
    assert saves.runs("org/My Model", "lora") == ["new", "old"]
    assert saves.runs("org/My Model", "full") == []
    assert saves.run_path("m", "lora", "new") == tmp_path / "m" / "lora" / "new"
    assert str(saves.checkpoint_path("m", "lora", "/abs/run")) == "/abs/run"
    assert saves.args_path("set1") == tmp_path / "configs" / "set1.yaml"
    assert saves.args_path("v1.2") == tmp_path / "configs" / "v1.2.yaml"
    assert folder_name("/models/qwen/") == "qwen"
    assert looks_like_hub_id("Qwen/Qwen2.5-0.5B") and not looks_like_hub_id("/abs/path")


def test_webui_without_gradio_names_the_extra(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "gradio", None)  # `import gradio` raises ImportError
    assert main(["webui"]) == 2
    assert "pip install 'tuneforge[web]'" in capsys.readouterr().err
