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
