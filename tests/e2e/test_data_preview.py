"""`tuneforge data preview` as a user runs it: each stage on the project's data, and
LLaMA-Factory's demo catalogue unedited."""

from __future__ import annotations

import re
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


def preview_counts(out: str) -> tuple[int, int]:
    """(tokens, trained tokens) of the train split, as the preview prints them."""
    match = re.search(r"train \(supervised\): .*\n  tokens: ([\d,]+), trained: ([\d,]+)", out)
    assert match, out
    return int(match[1].replace(",", "")), int(match[2].replace(",", ""))


@pytest.mark.parametrize(("template", "stop_word"), [("phi", "<|end|>"), ("glm4", "<|user|>")])
def test_preview_encodes_as_training_does(base, tmp_path, template, stop_word):
    """Training fits the tokenizer to the template (its stop words become tokens, phi's EOS is
    replaced); the preview must count with that tokenizer too, not the one on disk."""
    from tuneforge.config.loader import build_config
    from tuneforge.data.pipeline import prepare_data
    from tuneforge.data.preview import statistics
    from tuneforge.models.tiny import build_tiny_tokenizer
    from tuneforge.models.tokenizer import load_tokenizer_and_template

    bare = build_tiny_tokenizer("qwen2", 4096, extra_special_tokens=[])
    assert stop_word not in bare.get_vocab()  # else both paths would agree anyway
    bare.save_pretrained(tmp_path / "tokenizer")
    keys = {
        **base,
        "model_name_or_path": str(tmp_path / "tokenizer"),
        "template": template,
        "dataset": "identity,tool_demo",
        "max_samples": 5,
    }
    result = preview(keys, tmp_path, "-n", "1")
    assert result.returncode == 0, result.stderr

    # training's data path, with a cache of its own so that it encodes afresh
    config = build_config({**keys, "data_cache_dir": str(tmp_path / "training-cache")})
    tokenizer, bound = load_tokenizer_and_template(config)
    prepared = prepare_data(config, tokenizer, bound)
    assert "from_cache" not in prepared.report
    stats = statistics(prepared.train, prepared.kind)
    assert preview_counts(result.stdout) == (stats["tokens"], stats["trained_tokens"])


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
