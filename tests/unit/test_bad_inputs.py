"""Issue 14, part 2: each bad input is refused before any model weight is read, with one line
that names the key, file or row and the fix (a UserError: exit 2 without a traceback, as
tests/e2e/test_bad_inputs.py shows for a few of them through the CLI), and nothing on disk
changes. Config rules run in `build_config`; the rules that need the machine or files run in
`effective_training_arguments` and the data and tokenizer steps of `prepare_run`.

No model is loaded here: configs point `model_name_or_path` at a folder that does not exist,
so a rule that fired only after loading could not pass."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from conftest import DATA_DIR
from tuneforge.config.loader import build_config, load_config, read_config_file
from tuneforge.errors import ConfigError, DataError, ModelError
from tuneforge.training import arguments
from tuneforge.training.arguments import effective_training_arguments

MISSING_MODEL = "/no/such/model"


def built(**keys: Any):
    return build_config({"model_name_or_path": MISSING_MODEL, **keys})


def training(tmp_path: Path, **keys: Any):
    base = {"dataset": "identity", "do_train": True, "output_dir": str(tmp_path / "out")}
    return built(**{**base, **keys})


def snapshot(folder: Path) -> dict[str, tuple[int, int, bytes]]:
    """Every path under `folder` with its size, mtime and (for files) contents."""
    found = {}
    for path in sorted(folder.rglob("*")):
        stat = path.stat()
        content = path.read_bytes() if path.is_file() else b""
        found[str(path.relative_to(folder))] = (stat.st_size, stat.st_mtime_ns, content)
    return found


# ---- config keys transformers or peft reject only after the model has loaded -------------------


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        ({"learning_rate": -1e-4}, r"`learning_rate: -0.0001` must be >= 0 \(e.g. 1.0e-4"),
        ({"learning_rate": "nan"}, r"`learning_rate: nan` must be >= 0"),
        ({"per_device_train_batch_size": 0}, "`per_device_train_batch_size: 0` must be at least 1"),
        ({"per_device_eval_batch_size": -2}, "`per_device_eval_batch_size: -2` must be at least 1"),
        (
            {"gradient_accumulation_steps": 0},
            r"`gradient_accumulation_steps: 0` must be at least 1",
        ),
        ({"weight_decay": -0.1}, r"`weight_decay: -0.1` must be >= 0"),
        ({"adam_beta2": 1.0}, r"`adam_beta2: 1.0` must be in \[0, 1\)"),
        ({"lora_rank": 0}, "`lora_rank: 0`: the rank of a LoRA adapter is a positive integer"),
        ({"lora_dropout": 1.5}, r"`lora_dropout: 1.5` is a probability: give a value in \[0, 1\)"),
        (
            {"num_train_epochs": -1},
            r"`num_train_epochs: -1` without `max_steps` trains no step: give a positive number",
        ),
        ({"num_train_epochs": 0}, "`num_train_epochs: 0` without `max_steps` trains no step"),
    ],
)
def test_values_that_fail_after_loading_or_train_nothing_are_refused(keys, expected):
    with pytest.raises(ConfigError, match=expected):
        built(dataset="identity", do_train=True, **keys)


def test_the_same_keys_with_sound_values_still_build():
    config = built(
        dataset="identity",
        do_train=True,
        learning_rate=0,  # allowed: a dry run of the optimizer
        per_device_train_batch_size=1,
        gradient_accumulation_steps=1,
        lora_rank=1,
        lora_dropout=0.0,
        num_train_epochs=-1,
        max_steps=10,  # max_steps decides: the epochs do not matter
    )
    assert config.training["max_steps"] == 10
    assert built(num_train_epochs=0).training["num_train_epochs"] == 0  # no training: harmless


def test_several_bad_values_are_named_at_once():
    with pytest.raises(ConfigError) as error:
        built(learning_rate=-1, per_device_train_batch_size=0, gradient_accumulation_steps=0)
    message = str(error.value)
    for name in ("learning_rate", "per_device_train_batch_size", "gradient_accumulation_steps"):
        assert f"`{name}: " in message


@pytest.mark.parametrize(
    ("val_size", "ok"), [(1.5, False), (2.25, False), (0.5, True), (1, True), (10, True)]
)
def test_val_size_is_a_fraction_below_one_or_a_whole_count(val_size, ok):
    if ok:
        assert built(dataset="identity", val_size=val_size).data.val_size == val_size
        return
    with pytest.raises(ConfigError) as error:
        built(dataset="identity", val_size=val_size)
    message = str(error.value)
    assert message.startswith(f"`val_size: {val_size}`")
    assert "a fraction of the examples must be below 1" in message
    assert "a number of examples an integer" in message


# ---- keys another finetuning method would ignore ------------------------------------------------


@pytest.mark.parametrize("method", ["full", "freeze"])
@pytest.mark.parametrize(
    "keys",
    [
        {"lora_rank": 16},
        {"lora_alpha": 64},
        {"lora_dropout": 0.1},
        {"lora_target": "q_proj,v_proj"},
        {"additional_target": "embed_tokens"},
        {"create_new_adapter": True},
        {"use_rslora": True},
    ],
)
def test_lora_keys_with_another_method_are_refused(method, keys):
    (name,) = keys
    with pytest.raises(ConfigError) as error:
        built(finetuning_type=method, **keys)
    message = str(error.value)
    assert message.startswith(f"`{name}` only applies to LoRA")
    assert f"`finetuning_type: {method}`, which would ignore it" in message
    assert "set `finetuning_type: lora` or remove it" in message


def test_lora_keys_are_listed_together_and_their_defaults_are_harmless():
    with pytest.raises(ConfigError, match="`lora_rank`, `lora_dropout` only apply to LoRA"):
        built(finetuning_type="full", lora_rank=32, lora_dropout=0.05)
    # LLaMA-Factory YAMLs often spell the defaults out: nothing would be ignored
    spelled = built(finetuning_type="full", lora_rank=8, lora_alpha=16, lora_target="all")
    assert spelled.finetuning.finetuning_type == "full"


# ---- stages that would ignore packing -----------------------------------------------------------


@pytest.mark.parametrize("stage", ["rm", "dpo", "kto", "ppo"])
def test_packing_outside_pt_and_sft_is_refused(stage):
    extra = {"reward_model": "saves/rm"} if stage == "ppo" else {}
    with pytest.raises(ConfigError) as error:
        built(stage=stage, packing=True, **extra)
    message = str(error.value)
    assert message.startswith("`packing: true` applies to `stage: pt` and `sft`")
    assert f"`stage: {stage}`" in message and "remove it" in message
    assert built(stage=stage, **extra).data.packing is False


def test_packing_still_builds_for_language_modelling():
    assert built(stage="sft", packing=True).data.packing
    assert built(stage="pt").data.packing  # LLaMA-Factory's default for pt


# ---- the config file itself ---------------------------------------------------------------------


def test_a_key_given_twice_names_both_lines(tmp_path):
    path = tmp_path / "twice.yaml"
    path.write_text("learning_rate: 1.0e-4\ndataset: identity\nlearning_rate: 5.0e-5\n")
    before = snapshot(tmp_path)
    with pytest.raises(ConfigError) as error:
        read_config_file(path)
    assert str(error.value) == (
        f"{path}: key `learning_rate` is set twice, on lines 1 and 3 (YAML would keep the last "
        "one silently); keep one of them."
    )
    assert snapshot(tmp_path) == before


def test_duplicates_are_found_in_nested_mappings_and_json(tmp_path):
    nested = tmp_path / "nested.yaml"
    nested.write_text("rope_scaling: linear\nfsdp_config:\n  a: 1\n  b: 2\n  a: 3\n")
    with pytest.raises(ConfigError, match="key `a` is set twice, on lines 3 and 5"):
        read_config_file(nested)
    inline = tmp_path / "inline.yaml"
    inline.write_text("fsdp_config: {a: 1, a: 2}\n")
    with pytest.raises(ConfigError, match="key `a` is set twice, on line 1 "):
        read_config_file(inline)
    as_json = tmp_path / "twice.json"
    as_json.write_text('{"cutoff_len": 512, "cutoff_len": 1024}')
    with pytest.raises(ConfigError, match="key `cutoff_len` is set twice in one object"):
        read_config_file(as_json)


def test_a_merge_key_may_be_overridden(tmp_path):
    path = tmp_path / "anchors.yaml"
    path.write_text("base: &b\n  a: 1\n  b: 2\nfsdp_config:\n  <<: *b\n  a: 3\n")
    assert read_config_file(path)["fsdp_config"] == {"a": 3, "b": 2}


def test_a_config_that_is_not_utf8_names_the_byte(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("dataset: identity\n# café\n".encode("latin-1"))
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert str(error.value) == (
        f"config file {path} is not UTF-8 text: byte 0xe9 at offset 23 (line 2, column 6) is "
        "not UTF-8; save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8 FILE > NEW`)."
    )


def test_a_utf16_config_is_named_as_such(tmp_path):
    path = tmp_path / "utf16.yaml"
    path.write_text("dataset: identity\n", encoding="utf-16")
    with pytest.raises(ConfigError, match="it is UTF-16 text .*; save it as UTF-8"):
        load_config(path)


# ---- other formats: LLaMA-Factory v1, Megatron ---------------------------------------------------


def test_a_v1_config_is_named_as_such():
    v1 = {"model": "Qwen/Qwen3-0.6B", "train_dataset": "data/v1_sft_demo.yaml"}
    with pytest.raises(ConfigError) as error:
        build_config({**v1, "micro_batch_size": 1}, source="v1.yaml")
    message = str(error.value)
    assert message.startswith("v1.yaml: this is LLaMA-Factory's v1 config format")
    assert "tuneforge reads the flat format" in message and "examples/sft_lora.yaml" in message
    assert "`model` -> `model_name_or_path`" in message
    assert "`micro_batch_size` -> `per_device_train_batch_size`" in message
    assert "did you mean" not in message.lower() and "ref_model" not in message


def test_a_nested_v1_config_is_named_as_such():
    nested = {"model": {"model_name_or_path": "x"}, "data": {"dataset": "identity"}}
    with pytest.raises(ConfigError) as error:
        build_config(nested, source="nested.yaml")
    message = str(error.value)
    assert "LLaMA-Factory's v1 config format (top-level `model:` and `data:` mappings)" in message
    assert "move the keys inside them to the top level" in message


def test_megatron_keys_say_megatron_is_not_supported():
    keys = {"tensor_model_parallel_size": 2, "pipeline_model_parallel_size": 2}
    with pytest.raises(ConfigError) as error:
        built(**keys)
    message = str(error.value)
    assert message.startswith("`tensor_model_parallel_size`, `pipeline_model_parallel_size`: ")
    assert "Megatron-Core training" in message and "is not supported by tuneforge" in message
    assert "unknown config key" not in message


def test_use_mca_says_megatron_is_not_supported(tmp_path, monkeypatch):
    monkeypatch.setenv("USE_MCA", "1")
    with pytest.raises(ConfigError, match="USE_MCA=1: Megatron-Core training .* Unset USE_MCA"):
        effective_training_arguments(training(tmp_path))
    assert not (tmp_path / "out").exists()


# ---- output_dir ---------------------------------------------------------------------------------


def test_an_output_dir_that_is_a_file_is_refused_and_kept(tmp_path):
    output = tmp_path / "out"
    output.write_text("my notes")
    before = snapshot(tmp_path)
    with pytest.raises(ConfigError) as error:
        effective_training_arguments(training(tmp_path))
    assert str(error.value).startswith(f"`output_dir: {output}` is a file, not a folder")
    assert snapshot(tmp_path) == before


def test_an_output_dir_under_a_file_is_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    before = snapshot(tmp_path)
    with pytest.raises(ConfigError) as error:
        effective_training_arguments(training(tmp_path, output_dir=str(tmp_path / "file/a/b")))
    assert f"{tmp_path / 'file'} is a file, so no folder can be made under it" in str(error.value)
    assert snapshot(tmp_path) == before


def test_an_output_dir_that_cannot_be_written_is_refused(tmp_path, monkeypatch):
    # the tests run as root, who may write anywhere: the permission check is what is tested
    monkeypatch.setattr(
        arguments.os, "access", lambda path, mode: Path(path) != tmp_path / "locked"
    )
    (tmp_path / "locked").mkdir()
    before = snapshot(tmp_path)
    output = tmp_path / "locked" / "run"
    with pytest.raises(ConfigError) as error:
        effective_training_arguments(training(tmp_path, output_dir=str(output)))
    assert str(error.value) == (
        f"`output_dir: {output}`: this user may not write to {tmp_path / 'locked'} (to make "
        f"{output} in). Choose a folder you can write to, or change its permissions."
    )
    assert snapshot(tmp_path) == before


def test_a_sound_output_dir_is_not_made_by_the_checks(tmp_path):
    effective_training_arguments(training(tmp_path, output_dir=str(tmp_path / "new" / "run")))
    assert not (tmp_path / "new").exists()


# ---- packages the run needs ---------------------------------------------------------------------


def test_report_to_an_integration_that_is_not_installed(tmp_path, monkeypatch):
    from transformers.integrations import integration_utils

    available = ["tensorboard"]  # as here, wandb missing
    monkeypatch.setattr(
        integration_utils, "get_available_reporting_integrations", lambda: available
    )
    with pytest.raises(ConfigError) as error:
        effective_training_arguments(training(tmp_path, report_to="wandb"))
    assert str(error.value) == (
        "`report_to: wandb` needs the wandb package, which is not installed: pip install wandb "
        "(or set `report_to: none`)."
    )
    with pytest.raises(ConfigError, match="`report_to: wandb` needs the wandb package"):
        effective_training_arguments(training(tmp_path, report_to=["tensorboard", "wandb"]))
    with pytest.raises(ConfigError, match="`report_to: wandbb` is not an integration"):
        effective_training_arguments(training(tmp_path, report_to="wandbb"))
    assert effective_training_arguments(training(tmp_path, report_to="none")).report_to == []


@pytest.mark.parametrize(
    ("optim", "expected"),
    [
        ("paged_adamw_8bit", "is a bitsandbytes optimizer, and bitsandbytes is not installed"),
        ("adamw_bnb_8bit", "pip install 'tuneforge[qlora]' (bitsandbytes)"),
        ("lion_32bit", "or use `optim: adamw_torch`"),
        ("schedule_free_adamw", "pip install schedulefree"),
    ],
)
def test_an_optimizer_whose_package_is_missing(tmp_path, monkeypatch, optim, expected):
    import importlib.util

    real = importlib.util.find_spec
    missing = {"bitsandbytes", "schedulefree"}
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name in missing else real(name, *a)
    )
    with pytest.raises(ConfigError) as error:
        effective_training_arguments(training(tmp_path, optim=optim))
    assert str(error.value).startswith(f"`optim: {optim}` is a")
    assert expected in str(error.value)


def test_a_missing_accelerator_config_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="`accelerator_config: nowhere.json`: no such file"):
        effective_training_arguments(training(tmp_path, accelerator_config="nowhere.json"))


# ---- data files ---------------------------------------------------------------------------------


def catalogue(folder: Path, **files: str) -> None:
    entries = {name: {"file_name": file} for name, file in files.items()}
    (folder / "dataset_info.json").write_text(json.dumps(entries))


def load(folder: Path, name: str):
    from tuneforge.data.pipeline import load_examples, resolve_specs

    config = built(dataset=name, dataset_dir=str(folder))
    specs = resolve_specs(config.data)
    return load_examples([specs[name]], config.data, "supervised", config.seed)


@pytest.mark.parametrize("suffix", [".json", ".jsonl", ".csv", ".txt"])
def test_a_data_file_that_is_not_utf8_names_the_file_and_byte(tmp_path, suffix):
    # the bad byte comes after the first buffer a streaming reader decodes (8 KiB)
    good = "a" * 20_000
    texts = {
        ".json": f'[{{"instruction": "{good}", "output": "caf\xe9"}}]',
        ".jsonl": f'{{"instruction": "{good}", "output": "ok"}}\n{{"instruction": "caf\xe9"}}\n',
        ".csv": f"instruction,output\n{good},ok\ncaf\xe9,ok\n",
        ".txt": f"{good}\ncaf\xe9\n",
    }
    path = tmp_path / f"latin1{suffix}"
    path.write_bytes(texts[suffix].encode("latin-1"))
    catalogue(tmp_path, latin=path.name)
    offset = texts[suffix].index("\xe9")
    with pytest.raises(DataError) as error:
        load(tmp_path, "latin")
    message = str(error.value)
    assert message.startswith(f"data file {path} is not UTF-8 text: byte 0xe9 at offset {offset} ")
    assert "save the file as UTF-8" in message


def test_a_catalogue_that_is_not_utf8_is_named(tmp_path):
    (tmp_path / "dataset_info.json").write_bytes('{"caf\xe9": {}}'.encode("latin-1"))
    with pytest.raises(DataError, match=r"dataset_info.json is not UTF-8 text: byte 0xe9 at off"):
        load(tmp_path, "x")


@pytest.mark.parametrize("content", ["", "[]", "\n\n"])
def test_an_empty_data_file_is_refused_naming_it(tmp_path, content):
    (tmp_path / "empty.json").write_text(content)
    catalogue(tmp_path, empty="empty.json")
    with pytest.raises(DataError) as error:
        load(tmp_path, "empty")
    assert str(error.value) == (
        f"dataset `empty`: {tmp_path / 'empty.json'} holds no rows (an empty file, or `[]`); add "
        "examples to it, or take `empty` out of the config's datasets."
    )


# ---- the model folder and the template -----------------------------------------------------------


def test_a_data_folder_as_the_model_says_it_is_not_a_model(tmp_path):
    from tuneforge.models.tokenizer import load_tokenizer

    config = built(model_name_or_path=str(DATA_DIR))
    with pytest.raises(ModelError) as error:
        load_tokenizer(config.model)
    message = str(error.value)
    assert message.startswith(f"`model_name_or_path` {DATA_DIR} has no config.json, so it is not")
    assert "dataset_info.json" in message and "sentencepiece" not in message


def test_an_adapter_folder_as_the_model_says_where_it_goes(tmp_path):
    from tuneforge.models.tokenizer import check_model_folder

    (tmp_path / "adapter_config.json").write_text("{}")
    with pytest.raises(ModelError, match="holds a LoRA adapter .* set `adapter_name_or_path`"):
        check_model_folder(tmp_path, "model")


def test_a_tokenizer_may_come_from_a_folder_without_config_json(tmp_path):
    from tuneforge.models.tokenizer import check_model_folder

    (tmp_path / "tokenizer_config.json").write_text("{}")
    check_model_folder(tmp_path, "tokenizer")
    with pytest.raises(ModelError, match="has no config.json"):
        check_model_folder(tmp_path, "config")


@pytest.mark.parametrize("name", ["qwen3_vl_nothink", "qwen2_vl", "llava", "gemma4"])
def test_a_multimodal_template_says_multimodal_is_not_supported(name):
    from tuneforge.templates import get_template

    with pytest.raises(ConfigError) as error:
        get_template(name)
    message = str(error.value)
    assert message.startswith(f"`template: {name}` is one of LLaMA-Factory's multimodal")
    assert "does not support multimodal templates yet" in message
    assert "Did you mean" not in message


def test_text_templates_with_a_multimodal_name_in_llamafactory_still_work():
    from tuneforge.templates import get_template

    assert get_template("gemma3").name == "gemma3"


# ---- the model's positions ----------------------------------------------------------------------


def test_cutoff_len_beyond_the_positions_warns_naming_both(caplog):
    from transformers import Qwen2Config

    from tuneforge.models.loader import warn_of_positions_beyond

    model_config = Qwen2Config(max_position_embeddings=2048)
    with caplog.at_level(logging.WARNING, logger="tuneforge"):
        assert warn_of_positions_beyond(model_config, 32768)
    (record,) = caplog.records
    assert "cutoff_len 32768 is beyond this model's 2048 positions" in record.message
    assert "`rope_scaling: linear|dynamic|yarn`" in record.message
    assert not warn_of_positions_beyond(model_config, 2048)


def test_cutoff_len_is_checked_when_the_model_config_is_read(tiny_model_dir, caplog):
    from tuneforge.models.loader import load_config as load_model_config

    config = built(model_name_or_path=str(tiny_model_dir))
    with caplog.at_level(logging.WARNING, logger="tuneforge"):
        load_model_config(config.model, 100_000)  # reads config.json only, no weights
    assert any("cutoff_len 100000 is beyond" in r.message for r in caplog.records)
    caplog.clear()
    scaled = built(model_name_or_path=str(tiny_model_dir), rope_scaling="linear")
    with caplog.at_level(logging.WARNING, logger="tuneforge"):
        load_model_config(scaled.model, 100_000)
    assert not any("is beyond" in r.message for r in caplog.records)


# ---- a run that does not train ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("training_run", "expected"),
    [
        (True, "Loaded adapter saves/a; training goes on from it."),
        (False, "Loaded adapter saves/a to evaluate and predict with (no training)."),
    ],
)
def test_a_loaded_adapter_is_logged_for_what_the_run_does(
    monkeypatch, caplog, training_run, expected
):
    from tuneforge.adapters import lora

    monkeypatch.setattr(lora, "load_adapter", lambda model, path, **kwargs: ("peft", path))
    config = built(adapter_name_or_path="saves/a")
    with caplog.at_level(logging.INFO, logger="tuneforge"):
        lora.apply_lora(object(), config.finetuning, config.model, training=training_run)
    assert [r.message for r in caplog.records] == [expected]


# ---- truncation ---------------------------------------------------------------------------------


def test_truncation_says_how_many_examples_and_tokens_were_cut(tiny_tokenizer, caplog):
    from tuneforge.data.encode import EncodeOptions
    from tuneforge.data.example import Example, Message
    from tuneforge.data.pipeline import _plain_encode, encode, truncation_summary
    from tuneforge.templates import get_template

    template = get_template("qwen", tiny_tokenizer)
    essay = " ".join(f"word{i}" for i in range(6000))
    long = Example((Message("user", "Write an essay."), Message("assistant", essay)))
    short = Example((Message("user", "Hi"), Message("assistant", "Hello")))
    full = sum(
        len(tiny_tokenizer(text, add_special_tokens=False)["input_ids"])
        for turn in template.render(long.messages, None)
        for text in (turn.prompt, turn.response)
    )
    assert full > 6000  # every word is at least one token
    config = built(cutoff_len=64)
    dataset, report = encode(
        [long, short], "supervised", template, tiny_tokenizer, EncodeOptions(64), config.data
    )
    assert len(dataset["input_ids"][0]) == 64
    assert (report.truncated, report.tokens_cut, report.largest_cut) == (1, full - 64, full - 64)
    line = truncation_summary("Training", _plain_encode(report), "supervised", 64)
    assert line == (
        f"Training data: 1 of 2 examples were cut to cutoff_len 64, losing {full - 64:,} tokens "
        f"in all and at most {full - 64:,} from one example. Raise `cutoff_len` to keep more "
        "of them."
    )


def test_dropped_examples_are_counted_with_their_length():
    from tuneforge.data.pipeline import truncation_summary

    report = {
        "encoded": 8,
        "truncated": 3,
        "dropped": {"longer than cutoff_len": 2},
        "tokens_cut": 900,
        "largest_cut": 500,
        "longest_dropped": 7000,
    }
    line = truncation_summary("Evaluation", report, "pairwise", 128)
    assert line == (
        "Evaluation data: 3 of 10 examples were cut to cutoff_len 128, losing 900 tokens in all "
        "and at most 500 from one example; 2 of 10 examples were dropped, as even cut they "
        "would not fit (2 longer than cutoff_len, the longest of 7,000 tokens). Raise "
        "`cutoff_len` to keep more of them."
    )
    assert truncation_summary("Training", {"encoded": 5, "dropped": {}}, "supervised", 64) is None
    pretrain = truncation_summary("Training", {"encoded": 4, "truncated": 1}, "pretrain", 64)
    assert pretrain and "split into chunks of 64 tokens (no token lost)" in pretrain
