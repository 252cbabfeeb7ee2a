"""Generated bad configs: wrong types and values for keys drawn with a fixed seed, each through
`build_config` (or `load_config` with a YAML file and `key=value` overrides) and the checks a
run makes before it loads a model: `effective_training_arguments`, the template and the
dataset catalogue. Whatever the input, the only exceptions are UserErrors (exit 2 with a
message, never a traceback), and nothing is written."""

from __future__ import annotations

import random
from typing import Any

import pytest
import yaml

from conftest import DATA_DIR
from tuneforge.config.loader import KEYS, build_config, load_config
from tuneforge.config.training import training_argument_types
from tuneforge.errors import UserError

CASES = 200
SEED = 14
VALUES: list[Any] = [
    None,
    "",
    "abc",
    "none",
    "null",
    -1,
    0,
    1,
    2,
    -0.5,
    1.5,
    1e30,
    -1e30,
    float("nan"),
    float("inf"),
    2**70,
    True,
    False,
    [],
    [1, 2],
    ["a", None],
    {},
    {"a": 1},
    {"nested": {"x": [1]}},
    "1,2",
    "-1",
    "0.0",
    "[1,",
    "{bad",
    "ü€ 😀",
    "x" * 300,
]
BASE = {
    "model_name_or_path": "/no/such/model",
    "template": "qwen",
    "dataset_dir": str(DATA_DIR),
    "dataset": "identity",
    "do_train": True,
    "max_steps": 1,
}


def cases() -> list[dict[str, Any]]:
    rng = random.Random(SEED)
    names = sorted(set(KEYS) | set(training_argument_types()))
    return [
        {name: rng.choice(VALUES) for name in rng.sample(names, rng.randint(1, 3))}
        for _ in range(CASES)
    ]


def pre_load_checks(config: Any) -> None:
    """What a run checks before it reads a model (stages/runner.py: prepare_run)."""
    from tuneforge.data.pipeline import resolve_specs
    from tuneforge.templates import get_template
    from tuneforge.training.arguments import effective_training_arguments

    if not config.training.get("deepspeed"):  # on CPU it would start deepspeed.comm here
        effective_training_arguments(config)
    get_template(config.data.template or "qwen", tool_format=config.data.tool_format)
    resolve_specs(config.data)


@pytest.mark.filterwarnings("ignore::FutureWarning")  # transformers on deprecated keys drawn
def test_generated_bad_configs_raise_only_user_errors(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative paths among the values land here, if anywhere
    monkeypatch.delenv("TENSORBOARD_LOGGING_DIR", raising=False)  # tensorboard_dir sets it
    monkeypatch.delenv("USE_MCA", raising=False)
    (tmp_path / "out").mkdir()
    crashes = []
    drawn = cases()
    assert len(drawn) == CASES and drawn == cases()  # the same cases on every run
    for number, keys in enumerate(drawn):
        raw = {**BASE, "output_dir": str(tmp_path / "out"), **keys}
        try:
            if number % 2:
                config = build_config(raw, source="fuzz")
            else:  # half as a file with command-line overrides, as `tuneforge train` reads them
                path = tmp_path / "case.yaml"
                path.write_text(yaml.safe_dump(BASE | {"output_dir": str(tmp_path / "out")}))
                overrides = [f"{name}={value}" for name, value in keys.items()]
                config = load_config(path, overrides)
            pre_load_checks(config)
        except UserError as error:
            assert str(error).strip(), keys  # a message, not an empty line
        except Exception as error:  # what the test looks for: a crash instead of a message
            crashes.append(f"{keys!r:.200}: {type(error).__name__}: {error!s:.200}")
    assert not crashes, "\n".join(crashes)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["case.yaml", "out"]
    assert not any((tmp_path / "out").iterdir())
