"""Every config key is consumed or refused: a key tuneforge declares must be read somewhere
in the code that runs (not only where configs are declared and checked, nor in the web UI's
forms), or be marked `not_yet` (refused when set). transformers' training keys are consumed by
transformers, except those whose consumer tuneforge replaces (its own loss, its own prediction
loop): each of those must be read by tuneforge or refused. A key added without a consumer
fails here, so "accepted and then ignored" cannot come back."""

from __future__ import annotations

import ast
import dataclasses
import functools
from pathlib import Path

import pytest

from tuneforge.config.base import not_yet_note
from tuneforge.config.loader import SECTIONS, build_config
from tuneforge.errors import ConfigError

SRC = Path(__file__).resolve().parents[2] / "src" / "tuneforge"
# where keys are declared, checked or shown as form fields: no consumer there counts
NOT_CONSUMERS = ("config", "webui")
# transformers' keys whose transformers consumer tuneforge's own code replaces, with a value
# that differs from the default
REPLACED_TRANSFORMERS_KEYS = {
    "label_smoothing_factor": 0.1,  # transformers' label smoother: tuneforge's loss
    "generation_max_length": 64,  # Seq2SeqTrainer's generation: tuneforge's predict
    "generation_num_beams": 2,
    "generation_config": "gen.json",
    "predict_with_generate": True,
    "include_for_metrics": ["inputs"],  # compute_metrics inputs: tuneforge's metrics
    "eval_do_concat_batches": False,
    "batch_eval_metrics": True,
}
# names that tuneforge reads as something else (a model's generation_config): never a sign
# that the key is read
HOMONYMS = {"generation_config"}
# a value other than the default, by type, to see a key refused
OTHER_VALUE = {bool: lambda d: not d, int: lambda d: (d or 0) + 3, float: lambda d: 0.123}


@functools.cache
def consumed_names() -> frozenset[str]:
    """Names the code outside NOT_CONSUMERS reads: attributes (`config.model.name`), constant
    subscripts (`training["name"]`) and constant `.get`/`.pop` keys."""
    names: set[str] = set()
    for path in SRC.rglob("*.py"):
        if path.relative_to(SRC).parts[0] in NOT_CONSUMERS:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute):
                names.add(node.attr)
            elif isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant):
                names.add(str(node.slice.value))
            elif (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in ("get", "pop")
                and node.args
                and isinstance(node.args[0], ast.Constant)
            ):
                names.add(str(node.args[0].value))
    return frozenset(names - HOMONYMS)


def refused(name: str, value) -> bool:
    base = {"model_name_or_path": "m", "template": "qwen", "stage": "sft"}
    try:
        build_config({**base, name: value})
    except ConfigError as error:
        return f"`{name}" in str(error)
    return False


def declared_keys() -> list[tuple[str, dataclasses.Field]]:
    return [
        (f"{section}.{field.name}", field)
        for section, cls in SECTIONS.items()
        for field in dataclasses.fields(cls)
        if not not_yet_note(field)
    ]


@pytest.mark.parametrize("key", [k for k, _ in declared_keys()])
def test_every_declared_key_has_a_consumer_or_is_refused(key):
    name = key.partition(".")[2]
    if name in consumed_names():
        return
    field = dict(declared_keys())[key]
    other = OTHER_VALUE.get(type(field.default))
    assert other is not None, f"`{name}` is declared but nothing reads it"
    assert refused(name, other(field.default)), f"`{name}` is declared but nothing reads it"


@pytest.mark.parametrize("name", sorted(REPLACED_TRANSFORMERS_KEYS))
def test_every_replaced_transformers_key_is_read_or_refused(name):
    if name in consumed_names():
        return
    assert refused(name, REPLACED_TRANSFORMERS_KEYS[name]), f"`{name}` is silently ignored"


def test_the_finder_sees_a_key_that_nothing_reads():
    """The test above can fail: a name no code reads is not among the consumed ones."""
    assert "early_stopping_steps" in consumed_names()  # read by the stage runner
    assert "surely_no_such_config_key" not in consumed_names()
