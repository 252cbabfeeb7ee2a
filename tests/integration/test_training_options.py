"""Options around training on the tiny model: LoRA variants, adapters continued or stacked,
evaluation with accuracy, RoPE scaling, TensorBoard logs."""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file

from conftest import training_config
from tuneforge.stages import run_stage

pytestmark = pytest.mark.slow


def run(tiny_model_dir, out, **keys):
    defaults = {
        "learning_rate": 1e-2,
        "max_steps": 4,
        "finetuning_type": "lora",
        "disable_gradient_checkpointing": True,
    }
    assert run_stage(training_config(tiny_model_dir, out, **{**defaults, **keys})) == 0
    return out


def adapter_config(out):
    return json.loads((out / "adapter_config.json").read_text())


@pytest.mark.parametrize(
    ("keys", "check"),
    [
        ({"use_rslora": True}, lambda c, w: c["use_rslora"] is True),
        ({"use_dora": True}, lambda c, w: c["use_dora"] and any("magnitude" in n for n in w)),
        (
            {"lora_target": "q_proj,v_proj"},
            lambda c, w: sorted(c["target_modules"]) == ["q_proj", "v_proj"],
        ),
        ({"loraplus_lr_ratio": 16.0}, lambda c, w: c["r"] == 8),
        ({"lora_rank": 4, "lora_alpha": 32}, lambda c, w: (c["r"], c["lora_alpha"]) == (4, 32)),
    ],
)
def test_lora_variants(tiny_model_dir, tmp_path, keys, check):
    out = run(tiny_model_dir, tmp_path / "out", **keys)
    assert check(adapter_config(out), load_file(out / "adapter_model.safetensors"))


def test_loraplus_trains_b_faster_than_a(tiny_model_dir, tmp_path):
    """LoRA+ gives B matrices ratio x the learning rate: after one step from B = 0, B moved
    and A moved; with a large ratio B moves much more than with plain LoRA."""
    plain = load_file(
        run(tiny_model_dir, tmp_path / "plain", max_steps=1) / "adapter_model.safetensors"
    )
    plus = load_file(
        run(tiny_model_dir, tmp_path / "plus", max_steps=1, loraplus_lr_ratio=16.0)
        / "adapter_model.safetensors"
    )
    b = [n for n in plain if "lora_B" in n]
    moved_plain = sum(plain[n].abs().sum() for n in b)
    moved_plus = sum(plus[n].abs().sum() for n in b)
    assert moved_plus > 8 * moved_plain


def test_adapters_continue_and_stack(tiny_model_dir, tmp_path):
    first = run(tiny_model_dir, tmp_path / "first")
    continued = run(tiny_model_dir, tmp_path / "continued", adapter_name_or_path=str(first))
    assert adapter_config(continued)["r"] == 8  # the same adapter, trained further
    stacked = run(
        tiny_model_dir,
        tmp_path / "stacked",
        adapter_name_or_path=str(first),
        create_new_adapter=True,
        lora_rank=4,
    )
    assert adapter_config(stacked)["r"] == 4  # a new adapter on top of the merged first


def test_evaluation_reports_loss_and_accuracy(tiny_model_dir, tmp_path):
    out = run(
        tiny_model_dir,
        tmp_path / "out",
        val_size=8,
        do_eval=True,
        eval_strategy="steps",
        eval_steps=2,
        compute_accuracy=True,
        per_device_eval_batch_size=4,
    )
    results = json.loads((out / "all_results.json").read_text())
    assert results["eval_loss"] > 0 and 0 <= results["eval_accuracy"] <= 1
    log = [json.loads(line) for line in (out / "trainer_log.jsonl").read_text().splitlines()]
    assert any("eval_loss" in line for line in log)


def test_rope_scaling_extends_positions(tiny_model_dir, tmp_path):
    out = run(
        tiny_model_dir,
        tmp_path / "out",
        finetuning_type="full",
        rope_scaling="linear",
        cutoff_len=4096,
    )
    config = json.loads((out / "config.json").read_text())
    assert config["max_position_embeddings"] == 4096  # 2048 x ceil(4096 / 2048)
    assert config["rope_parameters"]["rope_type"] == "linear"
    assert config["rope_parameters"]["factor"] == 2.0


def test_tensorboard_logs_out_of_the_box(tiny_model_dir, tmp_path):
    out = run(
        tiny_model_dir, tmp_path / "out", report_to="tensorboard", logging_dir=str(tmp_path / "tb")
    )
    assert list((tmp_path / "tb").rglob("events.out.tfevents.*"))
    assert (out / "adapter_model.safetensors").is_file()


def test_quantization_is_never_silently_ignored(tiny_model_dir, tmp_path):
    """QLoRA needs bitsandbytes and a CUDA GPU: without them the run stops with what to do."""
    import importlib.util

    import torch

    from tuneforge.errors import UserError

    if importlib.util.find_spec("bitsandbytes") and torch.cuda.is_available():
        pytest.skip("bitsandbytes and a GPU are present: tests/integration/test_gpu.py covers it")
    config = training_config(tiny_model_dir, tmp_path / "out", quantization_bit=4, max_steps=1)
    # without a GPU that comes first: installing bitsandbytes would not help
    wanted = "CUDA GPU" if not torch.cuda.is_available() else r"tuneforge\[qlora\]"
    with pytest.raises(UserError, match=rf"quantization_bit: 4.*{wanted}"):
        run_stage(config)


def test_passes_of_at_most_cutoff_len_tokens_give_the_same_training(tiny_model_dir, tmp_path):
    """Without checkpointing a batch runs in passes of <= cutoff_len tokens; the losses and the
    trained weights equal one pass per batch (checked by forcing one pass)."""
    from tuneforge.stages import language_model

    keys = {
        "max_steps": 4,
        "finetuning_type": "full",
        "learning_rate": 1e-3,
        "disable_gradient_checkpointing": True,
        "cutoff_len": 64,
        "per_device_train_batch_size": 8,
    }
    from tuneforge.data.batch import PaddingFreeBatch

    passes = []
    real_passes = PaddingFreeBatch.passes

    def recorded_passes(batch, budget):
        passes.append(real_passes(batch, budget))
        return passes[-1]

    PaddingFreeBatch.passes = recorded_passes
    split = training_config(tiny_model_dir, tmp_path / "split" / "out", **keys)
    try:
        assert run_stage(split) == 0
    finally:
        PaddingFreeBatch.passes = real_passes
    assert len(passes) == 4 and all(len(rows) > 1 for rows in passes)  # really split
    assert all(row.num_tokens <= 64 for rows in passes for row in rows)
    original = language_model.pass_tokens
    language_model.pass_tokens = lambda config, model: None
    try:
        whole = training_config(tiny_model_dir, tmp_path / "whole" / "out", **keys)
        assert run_stage(whole) == 0
    finally:
        language_model.pass_tokens = original

    def losses(out):
        lines = (out / "trainer_log.jsonl").read_text().splitlines()
        return [json.loads(line)["loss"] for line in lines if "loss" in json.loads(line)]

    assert losses(tmp_path / "split" / "out") == pytest.approx(
        losses(tmp_path / "whole" / "out"), rel=1e-5
    )
    trained = load_file(tmp_path / "split" / "out" / "model.safetensors")
    reference = load_file(tmp_path / "whole" / "out" / "model.safetensors")
    for name, value in trained.items():
        assert (value - reference[name]).abs().max() < 1e-5, name


@pytest.mark.parametrize(
    ("disable", "forced", "device", "expected"),
    [
        (None, False, "cpu", False),  # unset on CPU: passes instead of recompute
        (None, False, "cuda", True),  # unset on GPUs: LLaMA-Factory's default
        (False, False, "cpu", True),  # asked for
        (True, False, "cuda", False),
        (True, True, "cpu", True),  # TrainingArguments' gradient_checkpointing wins
    ],
)
def test_gradient_checkpointing_default_depends_on_the_device(
    monkeypatch, disable, forced, device, expected
):
    from types import SimpleNamespace

    from tuneforge.models import loader

    monkeypatch.setattr(loader, "device_type", lambda: device)
    model = SimpleNamespace(disable_gradient_checkpointing=disable)
    training = SimpleNamespace(gradient_checkpointing=forced)
    assert loader.checkpointing_wanted(model, training) is expected
