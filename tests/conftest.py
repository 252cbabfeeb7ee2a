"""Shared fixtures: the project's demo data, a tiny model built offline, isolated caches."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DATA_DIR = REPO / "data"
LF_DEMO_DATA = REPO.parent / "shared" / "lf-demo-data"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny Qwen2-style model and tokenizer, built once per session from a seed."""
    from tuneforge.models.tiny import cached_tiny_model

    return cached_tiny_model(arch="qwen2", size="tiny", cache_dir=tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture
def data_cache(tmp_path) -> Path:
    """An empty encoded-dataset cache for one test."""
    return tmp_path / "encoded"


def training_config(model_dir: Path, output_dir: Path, **keys):
    """A short sft run of a tiny model on the project's identity data; `keys` override."""
    from tuneforge.config.loader import build_config

    base = {
        "model_name_or_path": str(model_dir),
        "template": "qwen",
        "dataset_dir": str(DATA_DIR),
        "dataset": "identity",
        "cutoff_len": 128,
        "do_train": True,
        "output_dir": str(output_dir),
        "data_cache_dir": str(output_dir.parent / "cache"),
        "per_device_train_batch_size": 4,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
    }
    return build_config({**base, **keys})
