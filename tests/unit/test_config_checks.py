"""The rules stages and the model loader applied when a run started, now applied by
`build_config`: the same errors, before any model loads (and in the web UI's validation)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tuneforge.config.finetuning import REFERENCE_FREE, uses_reference
from tuneforge.config.loader import build_config
from tuneforge.errors import ConfigError, NotAvailableError, UserError
from tuneforge.webui.arguments import train_keys, validate
from tuneforge.webui.paths import Saves
from tuneforge.webui.spec import form_spec

REPO = Path(__file__).resolve().parents[2]
# a model folder that does not exist: a check that fired only after loading could not pass
MISSING_MODEL = "/no/such/model"


def built(**keys):
    return build_config({"model_name_or_path": MISSING_MODEL, **keys})


@pytest.mark.parametrize("stage", ["rm", "dpo", "kto", "ppo"])
def test_token_accuracy_is_for_language_modelling_only(stage):
    with pytest.raises(ConfigError, match=f"applies to `stage: pt` and `sft`, not {stage}"):
        built(stage=stage, compute_accuracy=True, reward_model="rm_dir")
    for allowed in ("pt", "sft"):
        assert built(stage=allowed, compute_accuracy=True).finetuning.compute_accuracy


@pytest.mark.parametrize("name", ["kto_chosen_weight", "kto_rejected_weight"])
def test_dpo_refuses_kto_weights(name):
    with pytest.raises(ConfigError, match=f"`{name}` applies to `stage: kto`, not dpo"):
        built(stage="dpo", **{name: 2.0})


def test_kto_refuses_a_dpo_loss():
    with pytest.raises(ConfigError, match="`pref_loss: simpo` applies to `stage: dpo`"):
        built(stage="kto", pref_loss="simpo")


def test_kto_refuses_ld_alpha():
    with pytest.raises(ConfigError, match=r"`ld_alpha` \(LD-DPO\) applies to `stage: dpo`"):
        built(stage="kto", ld_alpha=0.5)


@pytest.mark.parametrize(
    "keys", [{"val_size": 0.1, "dataset": "identity"}, {"eval_dataset": "identity"}]
)
def test_ppo_refuses_evaluation_data(keys):
    # NotAvailableError, a UserError: the CLI shows it without a traceback
    with pytest.raises(NotAvailableError, match="`stage: ppo` does not evaluate yet") as error:
        built(stage="ppo", reward_model="saves/rm", **keys)
    assert isinstance(error.value, UserError)


@pytest.mark.parametrize(
    ("name", "value", "loss"),
    [("ref_model", "some/model", "simpo"), ("precompute_ref_log_probs", True, "orpo")],
)
def test_reference_free_losses_refuse_reference_keys(name, value, loss):
    message = f"`{name}` is not used by `pref_loss: {loss}` \\(a reference-free loss\\)"
    with pytest.raises(ConfigError, match=message):
        built(stage="dpo", finetuning_type="full", pref_loss=loss, **{name: value})


@pytest.mark.parametrize("stage", ["dpo", "kto"])
@pytest.mark.parametrize(
    ("name", "value"), [("ref_model_adapters", "saves/ref"), ("ref_model_quantization_bit", 4)]
)
def test_reference_options_need_ref_model(stage, name, value):
    with pytest.raises(ConfigError, match=f"`{name}` applies to `ref_model`, which is not set"):
        built(stage=stage, finetuning_type="full", **{name: value})


def test_unsloth_is_refused():
    with pytest.raises(ConfigError, match="`use_unsloth` is not supported by tuneforge yet"):
        built(use_unsloth=True)


def test_quantization_needs_bitsandbytes_as_method():
    message = r"`quantization_method: hqq` is not available yet.*`quantization_method: bnb`"
    with pytest.raises(NotAvailableError, match=message):
        built(quantization_bit=4, quantization_method="hqq")


def test_freeze_refuses_zero_trainable_layers():
    with pytest.raises(ConfigError, match="`freeze_trainable_layers: 0` trains no layer"):
        built(finetuning_type="freeze", freeze_trainable_layers=0)


def test_valid_combinations_still_build():
    dpo = built(
        stage="dpo",
        finetuning_type="full",
        ref_model="some/model",
        ref_model_adapters="saves/ref",
        kto_chosen_weight=1.0,  # the default, spelled out as LLaMA-Factory YAMLs often do
    )
    assert dpo.finetuning.ref_model_adapters == ["saves/ref"]
    assert built(stage="dpo", pref_loss="orpo").finetuning.pref_loss == "orpo"
    assert built(stage="kto", kto_chosen_weight=2.0, pref_beta=0.2).finetuning.stage == "kto"
    assert built(stage="ppo", reward_model="saves/rm", dataset="identity").data.val_size == 0
    assert built(quantization_bit=4).model.quantization_method == "bnb"
    assert built(finetuning_type="freeze", freeze_trainable_layers=-2).finetuning.stage == "sft"
    # zero layers only matter to freeze tuning
    assert built(freeze_trainable_layers=0).finetuning.finetuning_type == "lora"


def test_checks_stay_with_the_stages_that_use_the_keys():
    # ppo merges ref_model_adapters into the starting model when ref_model is not set
    ppo = built(stage="ppo", reward_model="saves/rm", ref_model_adapters="saves/ref")
    assert ppo.finetuning.ref_model is None
    assert built(stage="sft", ref_model="some/model").finetuning.ref_model == "some/model"
    assert built(stage="sft", ld_alpha=0.5).finetuning.ld_alpha == 0.5
    assert built(stage="sft", val_size=0.1, dataset="identity").data.val_size == 0.1


def test_earlier_rules_still_win():
    # a config wrong twice fails on the rule that already ran with the config before
    with pytest.raises(ConfigError, match="needs a `reward_model`"):
        built(stage="ppo", eval_dataset="identity")
    with pytest.raises(ConfigError, match="either `val_size` or `eval_dataset`"):
        built(stage="ppo", reward_model="saves/rm", val_size=0.1, eval_dataset="identity")


def test_reference_free_losses_are_declared_with_the_config():
    from tuneforge.training import preference_losses, reference

    assert preference_losses.REFERENCE_FREE is REFERENCE_FREE
    assert reference.uses_reference is uses_reference
    assert not uses_reference(built(stage="dpo", pref_loss="simpo").finetuning)
    assert uses_reference(built(stage="dpo", pref_loss="ipo").finetuning)
    assert uses_reference(built(stage="kto").finetuning)


def page_values(**changes):
    """Every web UI field at its form.yaml default, with the repository's data, then `changes`."""
    values = {name: field.default for name, field in form_spec().fields.items()}
    values |= {"model_name_or_path": "Qwen/Qwen2.5-0.5B", "template": "qwen"}
    values |= {"dataset": ["identity"], "dataset_dir": str(REPO / "data")}
    values |= {"output_dir": "run1", "compute_type": "fp32"}
    return values | changes


@pytest.mark.parametrize(
    ("changes", "error", "message"),
    [
        ({"stage": "kto", "pref_loss": "simpo"}, ConfigError, "`pref_loss: simpo` applies"),
        ({"acceleration": "unsloth"}, ConfigError, "`use_unsloth` is not supported"),
        (
            {"finetuning_type": "freeze", "freeze_trainable_layers": 0},
            ConfigError,
            "`freeze_trainable_layers: 0`",
        ),
    ],
)
def test_the_web_ui_refuses_them_before_starting_a_job(tmp_path, changes, error, message):
    keys = train_keys(page_values(**changes), Saves(tmp_path / "saves"))
    with pytest.raises(error, match=message):
        validate(keys)


def test_the_web_ui_refuses_ppo_evaluation(tmp_path):
    reward = tmp_path / "rm"
    reward.mkdir()  # the page checks that a local reward model exists before building
    values = page_values(stage="ppo", reward_model=str(reward), val_size=0.1)
    with pytest.raises(NotAvailableError, match="does not evaluate yet"):
        validate(train_keys(values, Saves(tmp_path / "saves")))
