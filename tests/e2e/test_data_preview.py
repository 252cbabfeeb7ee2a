"""`tuneforge data preview` as a user runs it: each stage on the project's data, and
LLaMA-Factory's demo catalogue unedited."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from conftest import DATA_DIR, LF_DEMO_DATA


def preview(config: dict, tmp_path, *extra: str) -> subprocess.CompletedProcess:
    path = tmp_path / "preview.yaml"
    path.write_text(yaml.safe_dump(config))
    return subprocess.run(
        [sys.executable, "-m", "tuneforge", "data", "preview", str(path), *extra],
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture
def base(tiny_model_dir, tmp_path):
    return {
        "model_name_or_path": str(tiny_model_dir),
        "template": "qwen",
        "cutoff_len": 512,
        "dataset_dir": str(DATA_DIR),
        "data_cache_dir": str(tmp_path / "cache"),
    }


def test_preview_marks_trained_spans_and_reports_statistics(base, tmp_path):
    result = preview({**base, "dataset": "identity,tool_demo"}, tmp_path, "-n", "2")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "dataset identity (identity.json): 60 rows, 60 examples kept" in out
    assert "train (supervised): 92 examples" in out
    assert "tokens:" in out and "trained:" in out and "p90" in out
    assert "<|im_start|>assistant\n⟦I am {{name}}" in out  # response marked, header not
    assert out.count("--- train example") == 2
    again = preview({**base, "dataset": "identity,tool_demo"}, tmp_path, "-n", "0")
    assert "loaded from cache" in again.stdout


@pytest.mark.parametrize(
    ("keys", "marker"),
    [
        ({"stage": "pt", "dataset": "pretrain_demo"}, "train (pretrain)"),
        ({"stage": "dpo", "dataset": "dpo_demo"}, "[rejected] ⟦"),
        ({"stage": "kto", "dataset": "kto_demo"}, "desirable] ⟦"),
    ],
)
def test_preview_of_each_stage(base, tmp_path, keys, marker):
    result = preview({**base, **keys}, tmp_path)
    assert result.returncode == 0, result.stderr
    assert marker in result.stdout


def test_bad_row_is_reported_without_traceback(base, tmp_path):
    (tmp_path / "bad.json").write_text('[{"instruction": "q", "output": 3}]')
    (tmp_path / "dataset_info.json").write_text('{"bad": {"file_name": "bad.json"}}')
    result = preview({**base, "dataset": "bad", "dataset_dir": str(tmp_path)}, tmp_path)
    assert result.returncode == 2
    assert (
        "bad.json row 1" in result.stderr
        and "`output` (response) must be a string" in result.stderr
    )
    assert "Traceback" not in result.stderr


@pytest.mark.skipif(not LF_DEMO_DATA.is_dir(), reason="LLaMA-Factory demo data (../shared) absent")
def test_llamafactory_catalogue_previews_unedited(base, tmp_path):
    config = {
        **base,
        "dataset_dir": str(LF_DEMO_DATA),
        "dataset": "identity,alpaca_en_demo,glaive_toolcall_en_demo",
    }
    result = preview(config, tmp_path, "-n", "1")
    assert result.returncode == 0, result.stderr
    assert "dataset glaive_toolcall_en_demo" in result.stdout
