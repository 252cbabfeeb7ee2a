"""Config loading: LLaMA-Factory keys, overrides, types, errors that name the key."""

from __future__ import annotations

import pytest
import yaml

from tuneforge.config.loader import build_config, load_config, write_resolved
from tuneforge.errors import ConfigError

LF_SFT = {
    "model_name_or_path": "Qwen/Qwen2.5-0.5B",
    "stage": "sft",
    "do_train": True,
    "finetuning_type": "lora",
    "lora_target": "all",
    "dataset": "identity,alpaca_en_demo",
    "template": "qwen",
    "cutoff_len": 2048,
    "max_samples": 1000,
    "overwrite_cache": True,
    "preprocessing_num_workers": 16,
    "output_dir": "saves/qwen/lora/sft",
    "logging_steps": 10,
    "save_steps": 500,
    "plot_loss": True,
    "overwrite_output_dir": True,
    "per_device_train_batch_size": 1,
    "gradient_accumulation_steps": 8,
    "learning_rate": "1.0e-4",
    "num_train_epochs": 3.0,
    "lr_scheduler_type": "cosine",
    "warmup_ratio": 0.1,
    "bf16": True,
    "ddp_timeout": 180000000,
}


@pytest.fixture
def lf_yaml(tmp_path):
    path = tmp_path / "sft.yaml"
    path.write_text(yaml.safe_dump(LF_SFT))
    return path


def test_llamafactory_yaml_maps_onto_sections(lf_yaml):
    config = load_config(lf_yaml)
    assert config.model.model_name_or_path == "Qwen/Qwen2.5-0.5B"
    assert config.data.dataset == ["identity", "alpaca_en_demo"]
    assert config.finetuning.lora_target == ["all"]
    assert config.finetuning.lora_alpha == 16  # LLaMA-Factory: 2 x lora_rank by default
    assert config.finetuning.plot_loss is True
    assert config.extras.overwrite_output_dir is True
    assert config.training["learning_rate"] == pytest.approx(1e-4)
    assert config.training["num_train_epochs"] == 3.0
    assert config.data.packing is False  # sft does not pack unless asked


def test_overrides_win_and_are_typed(lf_yaml):
    config = load_config(lf_yaml, ["learning_rate=2e-5", "lora_rank=16", "dataset=[a, b]"])
    assert config.training["learning_rate"] == pytest.approx(2e-5)
    assert config.finetuning.lora_rank == 16
    assert config.finetuning.lora_alpha == 32
    assert config.data.dataset == ["a", "b"]


def test_unknown_key_names_the_closest_valid_ones(lf_yaml):
    with pytest.raises(ConfigError) as error:
        load_config(lf_yaml, ["learnig_rate=1e-4"])
    message = str(error.value)
    assert "`learnig_rate`" in message and "`learning_rate`" in message
    assert "on the command line" in message


def test_unknown_key_in_file_says_which_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model_name_or_path: x\nlora_rnak: 8\n")
    with pytest.raises(ConfigError, match=r"lora_rnak.*lora_rank.*bad\.yaml"):
        load_config(path)


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("lora_rank=abc", "`lora_rank`: got 'abc', expected an integer"),
        ("stage=foo", "`stage`: got 'foo', expected one of 'pt', 'sft'"),
        ("train_on_prompt=maybe", "`train_on_prompt`: got 'maybe', expected true or false"),
        ("val_size=lots", "`val_size`: got 'lots', expected a number"),
        ("rope_scaling=cubic", "'linear', 'dynamic', 'yarn', 'llama3'"),
    ],
)
def test_wrong_value_names_key_value_and_allowed(lf_yaml, override, expected):
    with pytest.raises(ConfigError) as error:
        load_config(lf_yaml, [override])
    assert expected in str(error.value)


def test_known_but_unsupported_key_says_so(lf_yaml):
    with pytest.raises(ConfigError, match=r"`use_galore`.*not supported by tuneforge yet"):
        load_config(lf_yaml, ["use_galore=true"])
    # at its default value the key is harmless (LLaMA-Factory YAMLs often spell defaults out)
    assert load_config(lf_yaml, ["use_galore=false"]).finetuning.use_galore is False


def test_derived_keys_cannot_be_set(lf_yaml):
    with pytest.raises(ConfigError, match="computed by tuneforge"):
        load_config(lf_yaml, ["compute_dtype=bfloat16"])


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["mask_history=true", "train_on_prompt=true"], "contradict"),
        (["val_size=0.1", "eval_dataset=x"], "either `val_size` or `eval_dataset`"),
        (["finetuning_type=full", "use_dora=true"], "only applies to LoRA"),
        (["finetuning_type=full", "adapter_name_or_path=a"], "needs `finetuning_type: lora`"),
        (["stage=ppo"], "needs a `reward_model`"),
        (["stage=dpo", "train_on_prompt=true"], "only applies to `stage: sft`"),
        (["interleave_probs=0.5,0.5"], "needs `mix_strategy: interleave_under`"),
        (["mix_strategy=interleave_under", "interleave_probs=1"], "one probability per dataset"),
        (["quantization_bit=3"], "4 or 8 bits"),
        (["do_predict=true", "val_size=0.1"], "needs `predict_with_generate: true`"),
    ],
)
def test_cross_field_rules(lf_yaml, overrides, expected):
    with pytest.raises(ConfigError, match=expected):
        load_config(lf_yaml, overrides)


def test_packing_defaults_follow_the_stage():
    assert build_config({"stage": "pt"}).data.packing is True
    assert build_config({"stage": "sft", "neat_packing": True}).data.packing is True


def test_malformed_override_and_file(tmp_path):
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["learning_rate"])
    path = tmp_path / "broken.yaml"
    path.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


def test_resolved_yaml_holds_every_effective_value(lf_yaml, tmp_path):
    config = load_config(lf_yaml, ["hf_hub_token=secret"])
    path = write_resolved(config, tmp_path / "out")
    written = yaml.safe_load(path.read_text())
    assert written["lora_alpha"] == 16  # derived values are written, not just the given ones
    assert written["cutoff_len"] == 2048
    assert written["temperature"] == 0.95  # defaults too
    assert written["hf_hub_token"] == "<redacted>"
    # the file is itself a valid config that reproduces the run
    again = load_config(path, ["hf_hub_token=secret"])
    assert again.finetuning == config.finetuning and again.data == config.data


def test_training_arguments_are_built_and_validated(lf_yaml):
    config = load_config(lf_yaml, ["bf16=false", "lr_scheduler_type=cosine"])
    args = config.training_arguments()
    assert args.learning_rate == pytest.approx(1e-4)
    bad = load_config(lf_yaml, ["bf16=false", "lr_scheduler_type=wiggly"])
    with pytest.raises(ConfigError, match="wiggly"):
        bad.training_arguments()


def test_transformers4_keys_of_llamafactory_yamls_are_translated(lf_yaml):
    config = load_config(lf_yaml, ["logging_dir=tb", "group_by_length=true"])
    assert config.training["warmup_steps"] == pytest.approx(0.1)  # from warmup_ratio: 0.1
    assert config.training["train_sampling_strategy"] == "group_by_length"
    assert config.extras.tensorboard_dir == "tb"
    with pytest.raises(ConfigError, match="also set"):
        load_config(lf_yaml, ["warmup_steps=10"])
    with pytest.raises(ConfigError, match="use `fsdp_config`"):
        load_config(lf_yaml, ["fsdp_min_num_params=100"])


def test_yaml_bare_no_is_the_string_no_for_enum_keys(lf_yaml, tmp_path):
    path = tmp_path / "save.yaml"
    path.write_text(lf_yaml.read_text() + "save_strategy: no\n")  # YAML 1.1 reads False
    assert load_config(path).training["save_strategy"] == "no"
    with pytest.raises(ConfigError, match="quote it"):
        load_config(lf_yaml, ["template=no"])
