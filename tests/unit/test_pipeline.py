"""The data pipeline end to end: catalogue -> examples -> encoding -> cache."""

from __future__ import annotations

import json
import shutil

import pytest

from conftest import DATA_DIR, LF_DEMO_DATA
from tuneforge.config.loader import build_config
from tuneforge.data.pipeline import prepare_data
from tuneforge.errors import DataError
from tuneforge.templates import template_for


@pytest.fixture
def make(tiny_tokenizer, data_cache):
    """prepare_data for a config given as keyword overrides of a small sft config."""

    def prepare(**keys):
        base = {
            "template": "qwen",
            "dataset_dir": str(DATA_DIR),
            "cutoff_len": 256,
            "dataset": "alpaca_demo",
            "data_cache_dir": str(data_cache),
        }
        config = build_config({**base, **keys})
        return prepare_data(config, tiny_tokenizer, template_for(config.data, tiny_tokenizer))

    return prepare


@pytest.mark.parametrize(
    ("stage", "dataset", "columns"),
    [
        ("pt", "pretrain_demo", ["input_ids"]),
        ("sft", "identity,alpaca_demo,sharegpt_demo,tool_demo", ["input_ids", "labels"]),
        ("rm", "dpo_demo", ["prompt_ids", "chosen_ids", "rejected_ids"]),
        ("dpo", "dpo_demo", ["prompt_ids", "chosen_ids", "rejected_ids"]),
        ("kto", "kto_demo", ["prompt_ids", "response_ids", "kto_tag"]),
        ("ppo", "alpaca_demo", ["input_ids", "label_ids"]),
    ],
)
def test_every_stage_encodes_the_project_demo_data(make, stage, dataset, columns):
    keys = {"stage": stage, "dataset": dataset}
    if stage == "ppo":
        keys |= {"reward_model": "rm", "finetuning_type": "lora"}
    prepared = make(**keys)
    assert prepared.train.column_names == columns
    rows = sum(entry["rows"] for entry in prepared.report["datasets"])
    assert len(prepared.train) >= rows - prepared.report["train"]["dropped"].get(
        "longer than cutoff_len", 0
    )


def test_second_run_loads_the_cache_and_changes_invalidate_it(make, tmp_path):
    data_dir = tmp_path / "data"
    shutil.copytree(DATA_DIR, data_dir)
    first = make(dataset_dir=str(data_dir))
    assert "from_cache" not in first.report
    second = make(dataset_dir=str(data_dir))
    assert "from_cache" in second.report
    assert second.train["input_ids"] == first.train["input_ids"]
    assert "from_cache" not in make(dataset_dir=str(data_dir), cutoff_len=128).report
    assert "from_cache" not in make(dataset_dir=str(data_dir), overwrite_cache=True).report
    rows = json.loads((data_dir / "alpaca_demo.json").read_text())
    (data_dir / "alpaca_demo.json").write_text(json.dumps(rows[:50]))
    changed = make(dataset_dir=str(data_dir))
    assert "from_cache" not in changed.report and len(changed.train) == 50


def test_tokenized_path_saves_then_loads(make, tmp_path):
    target = tmp_path / "tokenized"
    first = make(tokenized_path=str(target), max_samples=10)
    assert (target / "train").is_dir() and len(first.train) == 10
    again = make(tokenized_path=str(target), max_samples=10)
    assert "from_cache" in again.report


def test_max_samples_val_size_and_eval_dataset(make):
    prepared = make(max_samples=40, val_size=0.25)
    assert (len(prepared.train), len(prepared.eval)) == (30, 10)
    prepared = make(eval_dataset="identity", max_samples=20)
    assert (len(prepared.train), len(prepared.eval)) == (20, 20)


def test_predict_with_generate_encodes_eval_as_prompts(make):
    prepared = make(val_size=10, do_predict=True, predict_with_generate=True)
    assert prepared.eval_kind == "unsupervised"
    assert prepared.eval.column_names == ["input_ids", "label_ids"]


def test_parallel_encoding_matches_serial(make):
    serial = make(preprocessing_batch_size=16)
    parallel = make(preprocessing_batch_size=16, preprocessing_num_workers=2, overwrite_cache=True)
    assert parallel.train["labels"] == serial.train["labels"]


@pytest.fixture
def bad_data(tmp_path):
    rows = [
        {"instruction": "fine", "output": "ok"},
        {"instruction": "no answer"},
        {"instruction": ["not", "text"], "output": "x"},
        {"instruction": "fine too", "output": "ok"},
    ]
    (tmp_path / "rows.json").write_text(json.dumps(rows))
    (tmp_path / "dataset_info.json").write_text(json.dumps({"rows": {"file_name": "rows.json"}}))
    return tmp_path


def test_a_bad_row_fails_the_run_naming_file_row_and_field(make, bad_data):
    with pytest.raises(DataError) as error:
        make(dataset="rows", dataset_dir=str(bad_data))
    message = str(error.value)
    assert "rows.json row 2" in message and "no response to train on" in message
    assert "skip_bad_rows: true" in message


def test_skip_bad_rows_skips_counts_and_says_why(make, bad_data):
    prepared = make(dataset="rows", dataset_dir=str(bad_data), skip_bad_rows=True)
    assert len(prepared.train) == 2
    (entry,) = prepared.report["datasets"]
    assert sum(entry["skipped"].values()) == 2
    assert any(
        "row 3" in line and "must be a string" in line for line in entry["examples_of_skipped"]
    )


def test_a_missing_column_is_a_dataset_level_error(make, tmp_path):
    (tmp_path / "q.json").write_text(json.dumps([{"question": "a", "answer": "b"}]))
    (tmp_path / "dataset_info.json").write_text(json.dumps({"q": {"file_name": "q.json"}}))
    with pytest.raises(DataError) as error:
        make(dataset="q", dataset_dir=str(tmp_path))
    message = str(error.value)
    assert "no `instruction` field" in message and "answer, question" in message
    assert '"columns": {"prompt": "<field>"}' in message


@pytest.mark.skipif(not LF_DEMO_DATA.is_dir(), reason="LLaMA-Factory demo data (../shared) absent")
@pytest.mark.parametrize(
    ("stage", "dataset"),
    [
        ("sft", "identity,alpaca_en_demo,alpaca_zh_demo,glaive_toolcall_en_demo"),
        ("pt", "c4_demo,wiki_demo"),
        ("dpo", "dpo_en_demo,dpo_zh_demo"),
        ("kto", "kto_en_demo"),
    ],
)
def test_llamafactory_demo_catalogue_loads_unedited(make, stage, dataset):
    prepared = make(stage=stage, dataset=dataset, dataset_dir=str(LF_DEMO_DATA), cutoff_len=1024)
    assert len(prepared.train) > 0
    assert all(not entry["skipped"] for entry in prepared.report["datasets"])
