"""Bad inputs through `tuneforge train` as a user runs it (issue 14, part 2): exit 2, one
`error:` line naming the key or file and the fix, no traceback, and nothing on disk changed,
the run's files and an existing output_dir's included.

Each case runs in its own process, all of them at once (the start-up dominates). They share
one model folder whose weights file is not a safetensors file, so a case that read the
weights would fail with another message: every refusal here comes before any weight is read.
tests/unit/test_bad_inputs.py has one case for each of the other bad inputs, in process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import DATA_DIR

pytestmark = pytest.mark.slow


def snapshot(*folders: Path) -> dict[str, tuple[int, int, bytes]]:
    found = {}
    for folder in folders:
        for path in sorted(folder.rglob("*")):
            stat = path.stat()
            content = path.read_bytes() if path.is_file() else b""
            found[str(path)] = (stat.st_size, stat.st_mtime_ns, content)
    return found


def prepare(case: Path, model: Path, **keys: Any) -> list[str]:
    """The case's folder: a config, a data catalogue, an output_dir holding a user's file."""
    (case / "data").mkdir(parents=True)
    shutil.copy(DATA_DIR / "identity.json", case / "data" / "identity.json")
    (case / "data" / "latin1.json").write_bytes(
        '[{"instruction": "Bonjour", "output": "Voil\xe0"}]'.encode("latin-1")
    )
    (case / "data" / "empty.json").write_text("[]")
    entries = {name: {"file_name": f"{name}.json"} for name in ("identity", "latin1", "empty")}
    (case / "data" / "dataset_info.json").write_text(json.dumps(entries))
    (case / "out").mkdir()
    (case / "out" / "notes.txt").write_text("the user's own file")
    config = {
        "model_name_or_path": str(model),
        "template": "qwen",
        "dataset_dir": str(case / "data"),
        "dataset": "identity",
        "cutoff_len": 64,
        "do_train": True,
        "output_dir": str(case / "out"),
        "overwrite_output_dir": True,  # so that only the bad input can stop the run
        "data_cache_dir": str(case / "cache"),
        "max_steps": 1,
        "report_to": "none",
        **keys,
    }
    (case / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return [str(case / "config.yaml")]


def twice(case: Path, model: Path) -> list[str]:
    args = prepare(case, model)
    path = Path(args[0])
    path.write_text(path.read_text() + "cutoff_len: 128\n")  # once more, on line 12
    return args


def file_as_output(case: Path, model: Path) -> list[str]:
    args = prepare(case, model)
    shutil.rmtree(case / "out")
    (case / "out").write_text("not a folder")
    return args


def wandb_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("wandb") is not None


# name -> (how the case is set up: its command-line arguments, what its error line says)
CASES: dict[str, tuple[Callable[[Path, Path], list[str]], list[str]]] = {
    "learning_rate": (
        lambda case, model: [*prepare(case, model), "learning_rate=-1e-4"],
        ["error: `learning_rate: -0.0001` must be >= 0"],
    ),
    "data_not_utf8": (
        lambda case, model: prepare(case, model, dataset="latin1"),
        ["latin1.json is not UTF-8 text: byte 0xe0 at offset 43", "save the file as UTF-8"],
    ),
    "key_twice": (
        twice,
        ["config.yaml: key `cutoff_len` is set twice, on lines 5 and 12", "keep one of them"],
    ),
    "output_dir_is_a_file": (
        file_as_output,
        ["`output_dir: ", "` is a file, not a folder", "Choose another path"],
    ),
    "report_to_wandb": (
        lambda case, model: prepare(case, model, report_to="wandb"),
        ["error: `report_to: wandb` needs the wandb package", "pip install wandb"],
    ),
    "empty_dataset": (
        lambda case, model: prepare(case, model, dataset="empty"),
        ["error: dataset `empty`: ", "empty.json holds no rows", "add examples to it"],
    ),
}


@pytest.fixture(scope="module")
def guarded_model(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny model's config and tokenizer, with weights that cannot be read."""
    folder = tmp_path_factory.mktemp("guarded") / "model"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "model.safetensors").write_bytes(b"reading the weights is a bug in this test")
    return folder


@pytest.fixture(scope="module")
def results(guarded_model, tmp_path_factory) -> dict[str, dict[str, Any]]:
    root = tmp_path_factory.mktemp("bad_inputs")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("USE_MCA", None)
    started = {}
    for name, (setup, _) in CASES.items():
        case = root / name
        case.mkdir()
        args = setup(case, guarded_model)
        before = snapshot(case, guarded_model)
        process = subprocess.Popen(
            [sys.executable, "-m", "tuneforge", "train", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=case,
        )
        started[name] = (process, case, before)
    done = {}
    for name, (process, case, before) in started.items():
        _, stderr = process.communicate(timeout=300)
        done[name] = {
            "code": process.returncode,
            "stderr": stderr,
            "unchanged": snapshot(case, guarded_model) == before,
        }
    return done


@pytest.mark.parametrize("name", list(CASES))
def test_a_bad_input_exits_2_with_one_line_and_changes_nothing(results, name):
    if name == "report_to_wandb" and wandb_installed():
        pytest.skip("wandb is installed here")
    result = results[name]
    stderr = result["stderr"]
    assert result["code"] == 2, stderr
    assert "Traceback" not in stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and stderr.rstrip().endswith(errors[0]), stderr
    for fragment in CASES[name][1]:
        assert fragment in errors[0]
    assert result["unchanged"], "the run changed files on disk"
