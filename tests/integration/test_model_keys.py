"""Model keys that used to be accepted and then ignored: each now does what LLaMA-Factory does
with it (or is refused; those are tested with the config checks)."""

from __future__ import annotations

import pytest
import torch

from conftest import training_config


def lora_model(tiny_model_dir, tmp_path, **keys):
    from tuneforge.adapters import apply_method
    from tuneforge.models.loader import load_model
    from tuneforge.models.tokenizer import load_tokenizer_and_template
    from tuneforge.training.arguments import effective_training_arguments

    config = training_config(tiny_model_dir, tmp_path / "out", finetuning_type="lora", **keys)
    tokenizer, template = load_tokenizer_and_template(config)
    training = effective_training_arguments(config)
    model = load_model(config.model, tokenizer, template.stop_words, training=training)
    return apply_method(model, config.finetuning, config.model)


def test_resize_vocab_under_lora_trains_the_embeddings(tiny_model_dir, tmp_path):
    """The resized rows of new tokens must learn: LLaMA-Factory trains the embedding and output
    layers in full beside the adapters (unless additional_target names others)."""
    model = lora_model(tiny_model_dir, tmp_path, resize_vocab=True)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any("embed_tokens.modules_to_save" in n for n in trainable)
    plain = lora_model(tiny_model_dir, tmp_path / "plain")
    assert not any("embed_tokens" in n for n, p in plain.named_parameters() if p.requires_grad)


def test_adapter_folder_is_read_when_training_goes_on(tiny_model_dir, tmp_path):
    """An adapter kept in a sub-folder of `adapter_name_or_path` continues from there."""
    first = lora_model(tiny_model_dir, tmp_path / "first")
    with torch.no_grad():
        for name, parameter in first.named_parameters():
            if "lora_B" in name:
                parameter.fill_(0.25)
    first.save_pretrained(tmp_path / "repo" / "adapters")
    keys = {"adapter_name_or_path": str(tmp_path / "repo"), "adapter_folder": "adapters"}
    resumed = lora_model(tiny_model_dir, tmp_path / "second", **keys)
    values = [p for n, p in resumed.named_parameters() if "lora_B" in n]
    assert values and all(bool((p == 0.25).all()) and p.requires_grad for p in values)


def test_print_param_status_prints_every_parameter(tiny_model_dir, tmp_path, capsys):
    model = lora_model(tiny_model_dir, tmp_path, print_param_status=True)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("name: ")]
    assert len(lines) == len(list(model.named_parameters()))
    assert any("lora_A" in line and "trainable: True" in line for line in lines)
    assert any("embed_tokens" in line and "trainable: False" in line for line in lines)


def test_offload_folder_reaches_a_device_map_auto_load(monkeypatch):
    """4-bit inference spread with device_map auto offloads to `offload_folder`."""
    import importlib.util

    from tuneforge.config.loader import build_config
    from tuneforge.models import loader

    monkeypatch.setattr(loader, "device_type", lambda: "cuda")
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: object() if name == "bitsandbytes" else real_find_spec(name, *a),
    )
    keys = {"model_name_or_path": "m", "template": "qwen", "quantization_bit": 4}
    config = build_config({**keys, "quantization_device_map": "auto", "offload_folder": "/x"})
    kwargs = loader.quantization_kwargs(config.model, torch.float16, training=False)
    assert kwargs["device_map"] == "auto" and kwargs["offload_folder"] == "/x"


def test_unsloth_gradient_checkpointing_is_refused():
    from tuneforge.config.loader import build_config
    from tuneforge.errors import ConfigError

    with pytest.raises(ConfigError, match="use_unsloth_gc"):
        build_config({"model_name_or_path": "m", "template": "qwen", "use_unsloth_gc": True})


def test_early_stopping_steps_stop_a_run_that_does_not_improve(tiny_model_dir, tmp_path):
    """transformers' EarlyStoppingCallback, as LLaMA-Factory adds it: with a learning rate of
    0 the evaluation loss never improves, so the run stops at the second evaluation."""
    import json

    from tuneforge.stages import run_stage

    out = tmp_path / "out"
    keys = {
        "max_steps": 8,
        "learning_rate": 0.0,
        "val_size": 4,
        "eval_strategy": "steps",
        "eval_steps": 1,
        "save_strategy": "steps",
        "save_steps": 1,
        "load_best_model_at_end": True,
        "early_stopping_steps": 1,
        "include_effective_tokens_per_second": True,
    }
    assert run_stage(training_config(tiny_model_dir, out, **keys)) == 0
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 2  # the second evaluation did not improve on the first
    metrics = json.loads((out / "train_results.json").read_text())
    assert metrics["effective_tokens_per_sec"] > 0


def test_prediction_shows_progress_with_a_rate(tiny_model_dir, tmp_path, capfd):
    """Generating for every evaluation prompt can take minutes: a bar counts the examples,
    with a rate and the time left (LLaMA-Factory runs printed nothing for 399 s)."""
    from tuneforge.stages import run_stage

    out = tmp_path / "out"
    keys = {
        "do_train": False,
        "do_predict": True,
        "predict_with_generate": True,
        "val_size": 3,
        "max_new_tokens": 2,
        "eval_num_beams": 2,
        "per_device_eval_batch_size": 2,
    }
    assert run_stage(training_config(tiny_model_dir, out, **keys)) == 0
    err = capfd.readouterr().err
    assert "Predicting" in err and "3/3" in err and "example/s" in err
    assert len((out / "generated_predictions.jsonl").read_text().splitlines()) == 3


def test_progress_bars_can_be_turned_off(monkeypatch, capsys):
    from tuneforge.utils.progress import progress_bar

    monkeypatch.setenv("TUNEFORGE_NO_PROGRESS", "1")
    bar = progress_bar(2, "Encoding", "example")
    bar.update(2)
    bar.close()
    assert "Encoding" not in capsys.readouterr().err


def test_encoding_shows_progress(tiny_model_dir, tiny_tokenizer, capfd):
    from tuneforge.data.pipeline import prepare_data
    from tuneforge.models.tokenizer import load_tokenizer_and_template

    config = training_config(tiny_model_dir, tiny_model_dir.parent / "enc" / "out")
    tokenizer, template = load_tokenizer_and_template(config)
    prepare_data(config, tokenizer, template)
    err = capfd.readouterr().err
    assert "Encoding" in err and "example/s" in err
