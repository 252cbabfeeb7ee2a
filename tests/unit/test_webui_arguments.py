"""The web workbench's form -> config keys -> YAML, their validation, and loading YAMLs back."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tuneforge.config.loader import build_config, read_config_file
from tuneforge.errors import ConfigError
from tuneforge.webui.arguments import (
    chat_keys,
    declared_default,
    export_keys,
    predict_keys,
    to_yaml,
    train_keys,
    validate,
    values_from_keys,
)
from tuneforge.webui.locale import FormError
from tuneforge.webui.paths import Saves
from tuneforge.webui.spec import form_spec

REPO = Path(__file__).resolve().parents[2]


def page_values(**changes):
    """Every field at its form.yaml default, as a fresh page holds them, then `changes`."""
    values = {name: field.default for name, field in form_spec().fields.items()}
    values |= {"model_name_or_path": "Qwen/Qwen2.5-0.5B", "template": "qwen"}
    values |= {"dataset": ["identity"], "output_dir": "run1", "compute_type": "fp32"}
    return values | changes


@pytest.fixture
def saves(tmp_path) -> Saves:
    return Saves(tmp_path / "saves")


def test_defaults_give_a_lora_sft_run_under_the_saves_folder(saves):
    keys = train_keys(page_values(), saves)
    assert keys["stage"] == "sft" and keys["do_train"] is True
    assert keys["finetuning_type"] == "lora"
    assert keys["dataset"] == "identity" and keys["dataset_dir"] == "data"
    assert keys["learning_rate"] == 5e-5 and keys["num_train_epochs"] == 3.0
    assert keys["lora_rank"] == 8 and keys["lora_target"] == "all"
    assert keys["output_dir"] == str(saves.root / "Qwen2.5-0.5B" / "lora" / "run1")
    # defaults that mean "not set" stay out of the YAML
    for absent in ("max_steps", "val_size", "quantization_bit", "rope_scaling", "packing"):
        assert absent not in keys
    assert not {"bf16", "fp16", "flash_attn", "freeze_trainable_layers", "pref_beta"} & set(keys)


def test_method_panels_decide_which_keys_are_written(saves):
    freeze = train_keys(page_values(finetuning_type="freeze", freeze_trainable_layers=-3), saves)
    assert freeze["freeze_trainable_layers"] == -3 and "lora_rank" not in freeze
    dpo = train_keys(page_values(stage="dpo", pref_beta=0.2, pref_loss="simpo"), saves)
    assert dpo["pref_beta"] == 0.2 and dpo["pref_loss"] == "simpo"
    ppo = train_keys(page_values(stage="ppo", reward_model="saves/rm"), saves)
    assert ppo["reward_model"] == "saves/rm" and "pref_beta" not in ppo


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ("auto", {}),
        ("sdpa", {"flash_attn": "sdpa"}),
        ("flashattn2", {"flash_attn": "fa2"}),
        ("liger_kernel", {"enable_liger_kernel": True}),
        ("unsloth", {"use_unsloth": True}),
    ],
)
def test_acceleration_maps_to_the_backend_keys(saves, choice, expected):
    keys = train_keys(page_values(acceleration=choice), saves)
    backend = {
        k: keys[k] for k in ("flash_attn", "enable_liger_kernel", "use_unsloth") if k in keys
    }
    assert backend == expected


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ("bf16", {"bf16": True}),
        ("fp16", {"fp16": True}),
        ("fp32", {}),
        ("pure_bf16", {"pure_bf16": True}),
    ],
)
def test_compute_type_maps_to_precision_keys(saves, choice, expected):
    keys = train_keys(page_values(compute_type=choice), saves)
    assert {k: keys[k] for k in ("bf16", "fp16", "pure_bf16") if k in keys} == expected


def test_a_checkpoint_is_an_adapter_for_lora_and_the_model_otherwise(saves):
    lora = train_keys(page_values(checkpoint=["run0", "/abs/other"]), saves)
    run0 = saves.root / "Qwen2.5-0.5B" / "lora" / "run0"
    assert lora["adapter_name_or_path"] == f"{run0},/abs/other"
    assert lora["model_name_or_path"] == "Qwen/Qwen2.5-0.5B"
    full = train_keys(page_values(finetuning_type="full", checkpoint=["run0"]), saves)
    assert full["model_name_or_path"] == str(saves.root / "Qwen2.5-0.5B" / "full" / "run0")
    assert "adapter_name_or_path" not in full


def test_the_model_name_names_the_saves_folder(saves):
    keys = train_keys(page_values(model_name="Qwen2.5-0.5B-Instruct"), saves)
    assert Path(keys["output_dir"]).parent.parent.name == "Qwen2.5-0.5B-Instruct"


def test_extra_arguments_add_and_override_keys(saves):
    keys = train_keys(page_values(extra_args="seed: 7\nlogging_steps: 1"), saves)
    assert keys["seed"] == 7 and keys["logging_steps"] == 1


@pytest.mark.parametrize("text", ["- a list", "key: [unclosed", "just words"])
def test_extra_arguments_must_be_a_mapping(saves, text):
    with pytest.raises(FormError) as caught:
        train_keys(page_values(extra_args=text), saves)
    assert "YAML" in str(caught.value)
    assert "YAML" in caught.value.message("zh") and "额外参数" in caught.value.message("zh")


def test_a_field_that_is_not_a_number_is_named_in_either_language(saves):
    with pytest.raises(FormError) as caught:
        train_keys(page_values(learning_rate="fast"), saves)
    assert str(caught.value) == "learning_rate: 'fast' is not a number."
    assert caught.value.message("zh") == "learning_rate：'fast' 不是数字。"


def test_yaml_reads_back_as_the_keys_and_opens_with_the_command(saves):
    keys = train_keys(page_values(lora_target="q_proj, v_proj"), saves)
    text = to_yaml(keys, "tuneforge train x.yaml")
    assert text.splitlines()[0] == "# tuneforge train x.yaml"
    assert yaml.safe_load(text) == keys
    assert keys["lora_target"] == "q_proj,v_proj"


def test_validation_accepts_the_default_run(saves, tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    keys = train_keys(
        page_values(model_name_or_path=str(model), dataset_dir=str(REPO / "data")), saves
    )
    config = validate(keys)
    assert config.finetuning.stage == "sft" and config.data.dataset == ["identity"]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"model_name_or_path": "./no/such/model"}, "Model path ./no/such/model does not exist."),
        ({"model_name_or_path": ""}, "Set the model path"),
        ({"dataset_dir": "/no/such/dir"}, "Dataset dir /no/such/dir does not exist."),
        ({"checkpoint": ["/no/such/adapter"]}, "Checkpoint /no/such/adapter does not exist."),
        ({"dataset": []}, "Pick at least one dataset."),
    ],
)
def test_paths_are_checked_before_the_run(saves, changes, message):
    values = page_values(dataset_dir=str(REPO / "data")) | changes
    with pytest.raises(FormError, match=message):
        validate(train_keys(values, saves))


def test_config_errors_come_from_the_config_loader(saves):
    keys = train_keys(
        page_values(dataset_dir=str(REPO / "data"), finetuning_type="full", quantization_bit="4"),
        saves,
    )
    with pytest.raises(ConfigError, match="QLoRA"):
        validate(keys)


def test_predict_keys_generate_greedily_on_the_eval_datasets(saves):
    values = page_values(eval_dataset=["identity"], eval_output_dir="pred", checkpoint=["run0"])
    keys = predict_keys(values, saves)
    assert keys["do_train"] is False and keys["do_predict"] and keys["predict_with_generate"]
    assert keys["eval_dataset"] == "identity" and keys["do_sample"] is False
    assert "temperature" not in keys and keys["max_new_tokens"] == 128
    assert keys["adapter_name_or_path"].endswith("run0")
    config = build_config(keys)
    assert config.training["do_predict"] and config.generation.do_sample is False
    sampled = predict_keys(values | {"eval_temperature": 0.7}, saves)
    assert sampled["temperature"] == 0.7 and "do_sample" not in sampled


def test_export_and_chat_keys(saves):
    values = page_values(export_dir="/tmp/out", export_size=2, checkpoint=["run0"])
    keys = export_keys(values, saves)
    assert keys["export_dir"] == "/tmp/out" and keys["export_size"] == 2
    assert "export_quantization_bit" not in keys and keys["export_device"] == "cpu"
    assert build_config(keys).export.export_size == 2
    chat = chat_keys(values | {"infer_dtype": "float32"}, saves)
    assert chat["infer_dtype"] == "float32" and chat["infer_backend"] == "huggingface"
    assert "export_dir" not in chat and build_config(chat).model.infer_dtype == "float32"


def test_a_page_run_loads_back_into_the_same_fields(saves):
    values = page_values(
        finetuning_type="freeze",
        acceleration="sdpa",
        compute_type="bf16",
        max_steps=30,
        val_size=0.1,
        freeze_trainable_layers=4,
        extra_args="seed: 3\n",
    )
    keys = train_keys(values, saves)
    loaded = page_values() | values_from_keys(keys)
    assert train_keys(loaded, saves) == keys
    assert loaded["acceleration"] == "sdpa" and loaded["compute_type"] == "bf16"
    assert loaded["extra_args"].strip() == "seed: 3"


@pytest.mark.parametrize("example", ["sft_lora.yaml", "dpo_lora.yaml", "sft_freeze.yaml"])
def test_example_yamls_load_into_the_page_and_run_the_same(tmp_path, monkeypatch, example):
    monkeypatch.chdir(tmp_path)  # a server started here: the examples' saves/ is its saves folder
    saves = Saves(Path("saves"))
    original = read_config_file(REPO / "examples" / example)
    values = page_values() | values_from_keys(original, saves)
    rebuilt = build_config(train_keys(values, saves))
    expected = build_config(original)
    sections, expected_sections = rebuilt.flat(), expected.flat()
    training, expected_training = sections.pop("training"), expected_sections.pop("training")
    assert sections == expected_sections
    # a training key set on one side only is at its default on the other
    for key in set(training) | set(expected_training):
        default = declared_default(key)
        assert training.get(key, default) == expected_training.get(key, default), key
