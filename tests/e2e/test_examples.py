"""Every shipped `examples/*.yaml` trains for real: `tuneforge train` as a subprocess on the tiny
model, then the files a user relies on are opened and checked. New examples are picked up by
the glob. The demo_*.yaml configs are left out: they belong to `make demo` (models/tiny-qwen2,
data written by `python -m tuneforge.demo`)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted(p for p in (REPO / "examples").glob("*.yaml") if not p.name.startswith("demo_"))
STEPS = 3
# A tiny model runs fastest on one thread; two spin against each other on a shared 2-core runner.
# Offline: an example must not need the network in CI.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
# Every linear layer of a Qwen2 decoder: what `lora_target: all` must reach.
QWEN2_LINEARS = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}

pytestmark = pytest.mark.slow


def tuneforge_train(config: Path, overrides: dict[str, str], cwd: Path):
    args = [f"{name}={value}" for name, value in overrides.items()]
    return subprocess.run(
        [sys.executable, "-m", "tuneforge", "train", str(config), *args],
        cwd=cwd,  # outside the repository: a path the test forgot to override cannot land in it
        env=ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )


def read_example(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def overrides_for(example: dict[str, Any], tiny_model_dir: Path, tmp_path: Path) -> dict[str, str]:
    """Command-line values (YAML scalars, as tuneforge parses them) that shrink a run to CI size."""
    overrides = {
        "model_name_or_path": str(tiny_model_dir),
        "output_dir": str(tmp_path / "out"),
        "data_cache_dir": str(tmp_path / "cache"),
        "dataset_dir": str(REPO / "data"),  # the examples' `data` is relative to the repo root
        "max_steps": str(STEPS),
        "logging_steps": "1",
        "save_strategy": '"no"',  # quoted: a bare `no` is YAML's false
    }
    if example.get("predict_with_generate") or example.get("stage") == "ppo":
        overrides["max_new_tokens"] = "8"  # a random model never stops on its own
    return overrides


@pytest.fixture(scope="module")
def tiny_reward_model(tiny_model_dir, tmp_path_factory) -> Path:
    """examples/rm_lora.yaml trained on the tiny model: the reward model of the ppo examples."""
    folder = tmp_path_factory.mktemp("reward")
    example = REPO / "examples" / "rm_lora.yaml"
    overrides = overrides_for(read_example(example), tiny_model_dir, folder)
    result = tuneforge_train(example, overrides, cwd=folder)
    assert result.returncode == 0, result.stderr[-4000:]
    return folder / "out"


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def expected_resolved(example: dict[str, Any], overrides: dict[str, str]) -> dict[str, Any]:
    """What resolved.yaml must say for each key of the example, overrides applied."""
    expected = {**example, **{k: yaml.safe_load(v) for k, v in overrides.items()}}
    # transformers 5 reads a float warmup_steps below 1 as a ratio (see config/training.py)
    if "warmup_ratio" in expected:
        expected["warmup_steps"] = expected.pop("warmup_ratio")
    if expected.get("report_to") == "none":
        expected["report_to"] = []
    if not cuda_available():
        for precision in ("bf16", "fp16"):
            if expected.get(precision):
                expected[precision] = False  # switched off with a notice (asserted)
    return expected


def same_value(expected: Any, resolved: Any) -> bool:
    if isinstance(resolved, list) and isinstance(expected, str):
        expected = [part.strip() for part in expected.split(",")]  # `dataset: a,b` is a list
    return expected == resolved


def check_resolved(out: Path, example: dict[str, Any], overrides: dict[str, str]) -> None:
    resolved = yaml.safe_load((out / "resolved.yaml").read_text(encoding="utf-8"))
    for name, value in expected_resolved(example, overrides).items():
        assert name in resolved, f"resolved.yaml lacks `{name}`"
        assert same_value(value, resolved[name]), f"{name}: {resolved[name]!r}, not {value!r}"


def check_training_log(out: Path, positive_loss: bool = True) -> None:
    records = [json.loads(line) for line in (out / "trainer_log.jsonl").read_text().splitlines()]
    steps = [record for record in records if "loss" in record]
    assert [record["current_steps"] for record in steps] == list(range(1, STEPS + 1))
    assert all(math.isfinite(record["loss"]) for record in steps)
    if positive_loss:
        assert all(record["loss"] > 0 for record in steps)
    results = json.loads((out / "all_results.json").read_text())
    assert math.isfinite(results["train_loss"])
    assert results["epoch"] > 0


def tensors(path: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(path)


def check_lora_adapter(out: Path, example: dict[str, Any], tiny_model_dir: Path) -> None:
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert adapter["peft_type"] == "LORA"
    assert adapter["r"] == example.get("lora_rank", 8)
    assert adapter["base_model_name_or_path"] == str(tiny_model_dir)
    weights = tensors(out / "adapter_model.safetensors")
    if example.get("lora_target", "all") == "all":
        # every linear layer of the decoder has an adapter; lm_head never has one
        adapted = {
            name.split(".lora_")[0].rsplit(".", 1)[-1] for name in weights if ".lora_" in name
        }
        assert adapted == QWEN2_LINEARS
    lora_b = [tensor for name, tensor in weights.items() if "lora_B" in name]
    assert lora_b, "no LoRA B matrices saved"
    # B starts at zero; trained adapters have moved away from it
    assert any(tensor.abs().sum() > 0 for tensor in lora_b)
    assert not (out / "model.safetensors").exists(), "LoRA saves the adapter, not the model"


def check_whole_model(out: Path, example: dict[str, Any], tiny_model_dir: Path) -> None:
    assert json.loads((out / "config.json").read_text())["model_type"] == "qwen2"
    base = tensors(tiny_model_dir / "model.safetensors")
    trained = tensors(out / "model.safetensors")
    assert trained.keys() == base.keys(), "a whole model, with every tensor of the base"
    assert not (out / "adapter_config.json").exists()
    changed = {name for name in base if not base[name].equal(trained[name])}
    assert changed, "the saved weights are the untrained ones"
    embedding = "model.embed_tokens.weight"
    if example["finetuning_type"] == "freeze":
        assert embedding not in changed, "freeze tuning trains decoder layers only"
    else:
        assert embedding in changed


def check_tokenizer(out: Path, example: dict[str, Any]) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.chat_template, "the tokenizer was saved without a chat_template"
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi there"}], tokenize=False, add_generation_prompt=True
    )
    assert "Hi there" in prompt
    if example.get("template") == "qwen":
        assert prompt.endswith("<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n")


def metric(results: dict[str, float], name: str) -> float:
    # LLaMA-Factory names these `predict_bleu-4` ...; accept both spellings
    value = results.get(f"predict_{name}", results.get(name))
    assert value is not None, f"no {name} in {sorted(results)}"
    return value


def check_predictions(out: Path, example: dict[str, Any]) -> None:
    lines = (out / "generated_predictions.jsonl").read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines]
    assert records
    for record in records:
        assert set(record) == {"prompt", "predict", "label"}
        assert record["label"].strip(), "an empty reference"
        if example.get("template") == "qwen":
            # the prompt stops where the answer begins; the label holds no end-of-turn marker
            assert record["prompt"].endswith("<|im_start|>assistant\n")
            assert "<|im_end|>" not in record["label"]
    results = json.loads((out / "predict_results.json").read_text())
    for name in ("bleu-4", "rouge-l"):
        assert 0 <= metric(results, name) <= 100


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_trains_and_saves_what_it_promises(path, tiny_model_dir, tmp_path, request):
    example = read_example(path)
    overrides = overrides_for(example, tiny_model_dir, tmp_path)
    if example.get("stage") == "ppo":  # the reward model it names, trained on the tiny model
        overrides["reward_model"] = str(request.getfixturevalue("tiny_reward_model"))
    result = tuneforge_train(path, overrides, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]

    out = tmp_path / "out"
    check_resolved(out, example, overrides)
    check_training_log(out, positive_loss=example.get("stage") != "ppo")  # PPO's can be < 0
    if example.get("finetuning_type", "lora") == "lora":
        check_lora_adapter(out, example, tiny_model_dir)
    else:
        check_whole_model(out, example, tiny_model_dir)
    check_tokenizer(out, example)
    if example.get("plot_loss"):
        assert (out / "training_loss.png").read_bytes().startswith(b"\x89PNG")
    if example.get("do_predict"):
        check_predictions(out, example)
    if example.get("bf16") and not cuda_available():
        assert "No CUDA device: bf16 is off" in result.stderr
    # pt packs by default (LLaMA-Factory's rule); the startup summary says so
    if example.get("packing", example.get("stage") == "pt"):
        assert ", packed)" in result.stderr


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_opens_with_its_command_and_is_listed(path):
    first_line = path.read_text(encoding="utf-8").splitlines()[0]
    assert first_line == f"# tuneforge train examples/{path.name}"
    assert f"[`{path.name}`]({path.name})" in (REPO / "examples" / "README.md").read_text()


def test_typo_in_an_example_exits_2_naming_the_key(tmp_path):
    text = (REPO / "examples" / "sft_lora.yaml").read_text(encoding="utf-8")
    assert "\nlora_rank:" in text
    config = tmp_path / "typo.yaml"
    config.write_text(text.replace("\nlora_rank:", "\nlora_rnak:"), encoding="utf-8")
    result = tuneforge_train(config, {}, cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-4000:]
    assert "`lora_rnak`" in result.stderr
    assert "Did you mean: `lora_rank`" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "saves").exists(), "nothing is written before the config is valid"
