"""Keys that used to be accepted and then ignored are refused with the reason, and a config
with several problems names them all at once."""

from __future__ import annotations

import pytest

from tuneforge.config.loader import build_config
from tuneforge.errors import ConfigError

BASE = {"model_name_or_path": "m", "template": "qwen", "stage": "sft"}


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"generation_max_length": 64}, "`generation_max_length` has no effect.*max_new_tokens"),
        ({"generation_num_beams": 4}, "`generation_num_beams` has no effect.*num_beams"),
        ({"generation_config": "g.json"}, "`generation_config` has no effect"),
        ({"include_for_metrics": ["inputs"]}, "`include_for_metrics` has no effect"),
        ({"batch_eval_metrics": True}, "`batch_eval_metrics` has no effect"),
        (
            {"stage": "dpo", "label_smoothing_factor": 0.1, "pref_beta": 0.1},
            "`label_smoothing_factor`.*`dpo_label_smoothing`",
        ),
        (
            {"do_eval": True, "predict_with_generate": True, "val_size": 0.1},
            "`do_eval` with `predict_with_generate` would evaluate nothing",
        ),
        ({"low_cpu_mem_usage": False}, "`low_cpu_mem_usage: false` cannot be honoured"),
        ({"ignore_pad_token_for_loss": False}, "no pad token to train"),
        ({"early_stopping_steps": 3}, "`early_stopping_steps` needs `load_best_model_at_end"),
        ({"early_stopping_steps": 0, "load_best_model_at_end": True}, "give 1 or more"),
        ({"eval_on_each_dataset": True}, "`eval_on_each_dataset` .*not supported"),
        ({"use_unsloth_gc": True}, "`use_unsloth_gc` .*not supported"),
        ({"freeze_vision_tower": False}, "`freeze_vision_tower` .*multimodal"),
        ({"pissa_iter": 4}, "`pissa_iter` .*PiSSA"),
        ({"task": "mmlu_test"}, "`task` .*tuneforge eval"),
    ],
)
def test_a_key_that_would_be_ignored_is_refused(keys, message):
    with pytest.raises(ConfigError, match=message):
        build_config({**BASE, **keys})


def test_defaults_and_lf_example_values_pass():
    """LLaMA-Factory's examples write these keys with their defaults: nothing to refuse."""
    build_config(
        {
            **BASE,
            "freeze_vision_tower": True,
            "low_cpu_mem_usage": True,
            "ignore_pad_token_for_loss": True,
            "label_smoothing_factor": 0.1,
            "generation_num_beams": None,
        }
    )


def test_every_bad_key_is_named_at_once():
    """Each retry costs a full start-up: a config with three unknown or mistyped keys and two
    broken rules says so in one error."""
    with pytest.raises(ConfigError) as caught:
        build_config({**BASE, "lora_rnak": 8, "learning_rate": "fast", "cutoff_len": "x"})
    text = str(caught.value)
    assert text.startswith("3 problems in the config:")
    assert "`lora_rnak`" in text and "`learning_rate`" in text and "`cutoff_len`" in text
    with pytest.raises(ConfigError) as caught:
        build_config({**BASE, "generation_num_beams": 4, "low_cpu_mem_usage": False})
    text = str(caught.value)
    assert text.startswith("2 problems") and "generation_num_beams" in text
    assert "low_cpu_mem_usage" in text


def test_one_problem_is_one_line():
    with pytest.raises(ConfigError) as caught:
        build_config({**BASE, "lora_rnak": 8})
    assert "\n" not in str(caught.value) and "problems" not in str(caught.value)
