"""Training on the tiny model, in process: every stage x method learns, touches only the
weights it should, saves output that loads back and generates; gradient accumulation equals
one big batch; an interrupted run resumes where it stopped, with the same data order."""

from __future__ import annotations

import json
import math
import os
import signal

import pytest
import torch
from safetensors.torch import load_file

from conftest import training_config
from tuneforge.errors import EXIT_INTERRUPTED
from tuneforge.stages import run_stage

pytestmark = pytest.mark.slow


def config(tiny_model_dir, tmp_path, **keys):
    defaults = {
        "learning_rate": 5e-3,
        "max_steps": 30,
        "lora_rank": 8,
        "seed": 0,
        "disable_gradient_checkpointing": True,
    }
    return training_config(tiny_model_dir, tmp_path / "out", **{**defaults, **keys})


@pytest.fixture(scope="module")
def pretrained_dir(tiny_model_dir, tmp_path_factory):
    """The tiny model after a short full pretraining on the demo prose: adapters are for
    pretrained models, and through random frozen embeddings no adapter can sharpen logits."""
    folder = tmp_path_factory.mktemp("pretrained")
    cfg = config(
        tiny_model_dir,
        folder,
        stage="pt",
        dataset="pretrain_demo",
        template="empty",
        finetuning_type="full",
        max_steps=60,
    )
    assert run_stage(cfg) == 0
    return folder / "out"


def logged_losses(output_dir):
    lines = (output_dir / "trainer_log.jsonl").read_text().splitlines()
    return [json.loads(line)["loss"] for line in lines if "loss" in json.loads(line)]


def base_weights(tiny_model_dir):
    return load_file(tiny_model_dir / "model.safetensors")


@pytest.mark.parametrize("stage", ["pt", "sft"])
@pytest.mark.parametrize("method", ["full", "freeze", "lora"])
def test_each_stage_and_method_learns_and_saves(
    tiny_model_dir, pretrained_dir, tmp_path, stage, method
):
    keys = {"stage": stage, "finetuning_type": method}
    if stage == "pt":
        keys |= {"dataset": "pretrain_demo", "template": "empty"}
    if method == "lora":
        tiny_model_dir = pretrained_dir
        keys |= {"learning_rate": 3e-2, "max_steps": 60}
        if stage == "pt":  # text the base has not seen yet
            keys |= {"dataset": "alpaca_demo", "learning_rate": 1e-2}
    if method == "freeze":
        # the last layer plus the embeddings: a random tiny model cannot sharpen its logits
        # through frozen random (tied) embeddings, whatever its last layer learns
        keys |= {
            "freeze_trainable_layers": 1,
            "freeze_extra_modules": "embed_tokens",
            "learning_rate": 1e-2,
        }
    cfg = config(tiny_model_dir, tmp_path, **keys)
    assert run_stage(cfg) == 0
    out = tmp_path / "out"

    losses = logged_losses(out)
    assert len(losses) == cfg.training["max_steps"] and all(math.isfinite(x) for x in losses)
    # falls clearly: 5-step means move by ~1% from noise alone on this tiny model
    assert sum(losses[-5:]) / 5 < 0.97 * sum(losses[:5]) / 5, losses

    before = base_weights(tiny_model_dir)
    if method == "lora":
        adapter = load_file(out / "adapter_model.safetensors")
        assert adapter and all("lora_" in name for name in adapter)
        assert any(t.abs().sum() > 0 for n, t in adapter.items() if "lora_B" in n)
    else:
        after = load_file(out / "model.safetensors")
        changed = {n for n in before if not torch.equal(before[n], after[n])}
        if method == "full":
            assert changed == set(before) - {"lm_head.weight"}  # tied to the embeddings
        else:  # the last of the two layers and the embeddings train, nothing else
            embeddings = "model.embed_tokens.weight"
            assert embeddings in changed and "model.norm.weight" not in changed
            assert all(n.startswith("model.layers.1.") for n in changed - {embeddings})
            assert not any(n.startswith("model.layers.0.") for n in changed)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.chat_template  # the template's jinja, saved with the model
    if stage == "sft":
        assert "<|im_start|>" in tokenizer.chat_template
    if method == "lora":
        from peft import PeftModel

        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), out)
    else:
        model = AutoModelForCausalLM.from_pretrained(out)
    ids = tokenizer("Who are you?", return_tensors="pt")["input_ids"]
    generated = model.generate(ids, max_new_tokens=5, do_sample=False)
    assert generated.shape[1] > ids.shape[1]
    assert (out / "resolved.yaml").is_file() and (out / "all_results.json").is_file()


def train_one_step(tiny_model_dir, tmp_path, batch, accumulation, **keys):
    cfg = config(
        tiny_model_dir,
        tmp_path,
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=accumulation,
        max_steps=1,
        optim="sgd",
        lr_scheduler_type="constant",
        learning_rate=1.0,
        max_grad_norm=0.0,
        disable_shuffling=True,
        finetuning_type="full",
        **keys,
    )
    assert run_stage(cfg) == 0
    return load_file(tmp_path / "out" / "model.safetensors")


def test_gradient_accumulation_equals_one_big_batch(tiny_model_dir, tmp_path):
    """SGD with lr 1: the weight change is the gradient, which must not depend on how the
    8 examples are split into micro-batches (the loss is normalised by all 8's tokens)."""
    big = train_one_step(tiny_model_dir, tmp_path / "a", batch=8, accumulation=1)
    split = train_one_step(tiny_model_dir, tmp_path / "b", batch=2, accumulation=4)
    before = base_weights(tiny_model_dir)
    for name in before:
        torch.testing.assert_close(
            split[name] - before[name], big[name] - before[name], rtol=1e-4, atol=1e-6
        )


@pytest.mark.parametrize("reentrant", [True, False])
def test_gradient_checkpointing_gives_the_same_gradient(
    tiny_model_dir, tmp_path, reentrant, caplog
):
    """Checkpointed layers (asked for explicitly: the CPU default is off) recompute the same
    activations, so one SGD step changes the weights exactly as without checkpointing."""
    caplog.set_level("INFO", logger="tuneforge")
    plain = train_one_step(tiny_model_dir, tmp_path / "a", batch=8, accumulation=1)
    assert "Gradient checkpointing: off" in caplog.text
    checkpointed = train_one_step(
        tiny_model_dir,
        tmp_path / "b",
        batch=8,
        accumulation=1,
        disable_gradient_checkpointing=False,
        use_reentrant_gc=reentrant,
    )
    assert "Gradient checkpointing: on" in caplog.text
    before = base_weights(tiny_model_dir)
    changed = 0
    for name in before:
        torch.testing.assert_close(
            checkpointed[name] - before[name], plain[name] - before[name], rtol=1e-4, atol=1e-6
        )
        changed += int(not torch.equal(plain[name], before[name]))
    assert changed == len(before)


def test_interrupted_run_resumes_with_the_same_data_order(tiny_model_dir, tmp_path, monkeypatch):
    keys = {
        "max_steps": 8,
        "save_strategy": "steps",
        "save_steps": 100,
        "lr_scheduler_type": "cosine",
        "finetuning_type": "full",
    }
    straight = config(tiny_model_dir, tmp_path / "straight", **keys)
    assert run_stage(straight) == 0
    expected = logged_losses(tmp_path / "straight" / "out")

    import tuneforge.stages.runner as runner
    from tuneforge.training.callbacks import StopOnSignalCallback

    class CtrlCAtStep3(StopOnSignalCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == 3:
                os.kill(os.getpid(), signal.SIGINT)  # a real signal through the real handler

    interrupted = config(tiny_model_dir, tmp_path / "resumed", **keys)
    monkeypatch.setattr(runner, "StopOnSignalCallback", CtrlCAtStep3)
    assert run_stage(interrupted) == EXIT_INTERRUPTED
    out = tmp_path / "resumed" / "out"
    assert (out / "checkpoint-4" / "tuneforge_complete").is_file()
    monkeypatch.setattr(runner, "StopOnSignalCallback", StopOnSignalCallback)
    assert run_stage(interrupted) == 0  # resumes from checkpoint-4 on its own
    resumed = logged_losses(out)
    assert len(resumed) == 8
    assert resumed == pytest.approx(expected, rel=1e-5)
