"""Shared fixtures: the project's demo data, a tiny model built offline, isolated caches."""

from __future__ import annotations

import re
from collections import defaultdict
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


# ---- the conformance suite's family x check table (tests/integration/test_conformance.py),
# printed at the end of a run that includes it; docs/conformance.md keeps a copy


# test name -> column; parametrised ids are "family" or "family-method"
_CHECKS = {
    "test_step": ("step full", "step lora"),
    "test_lora_targets": ("lora_targets",),
    "test_generation": ("generation",),
    "test_export": ("export",),
}
_MARK = {"passed": "ok", "failed": "FAIL", "skipped": "skip"}
_results: dict[str, dict[str, str]] = defaultdict(dict)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    match = re.search(r"test_conformance\.py::(\w+)\[([\w.-]+)\]", report.nodeid)
    if not match or match[1] not in _CHECKS:
        return
    if report.when != "call" and not (report.failed or report.skipped):
        return
    family, _, method = match[2].partition("-")
    columns = _CHECKS[match[1]]
    column = columns[0] if len(columns) == 1 else f"step {method}"
    _results[family][column] = _MARK.get(report.outcome, report.outcome)


def pytest_terminal_summary(terminalreporter) -> None:
    if not _results:
        return
    from tuneforge.models.families import model_types

    columns = ["path", *(c for group in _CHECKS.values() for c in group)]
    lines = [
        "| model type | " + " | ".join(columns) + " |",
        "|---" * (len(columns) + 1) + "|",
    ]
    for family in sorted(_results):
        known = model_types().get(family)
        cells = [known.path if known else "?"]
        cells += [_results[family].get(column, "-") for column in columns[1:]]
        lines.append(f"| {family} | " + " | ".join(cells) + " |")
    terminalreporter.section("conformance: family x check")
    for line in lines:
        terminalreporter.write_line(line)
