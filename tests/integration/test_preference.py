"""DPO (every pref_loss) and KTO on the tiny model, with LoRA and full tuning, on a separable
preference set built here: the rewards learn the preference, trainer_log.jsonl carries them,
the reference is what it should be (LoRA: the policy with adapters off, never a second model),
precomputed reference log-probs give the same run, outputs load back and prefer what they were
taught; and LLaMA-Factory's own dpo/kto example YAMLs run as they are."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from conftest import LF_DEMO_DATA, training_config
from tuneforge.stages import preference, run_stage

pytestmark = pytest.mark.slow

GOOD = "Gladly, here is a careful answer."
BAD = "No."
TOPICS = [
    "the sea", "a cat", "the moon", "bread", "rain", "a river", "music", "a garden",
    "the wind", "a book", "snow", "a bridge", "the sun", "a forest", "tea", "a clock",
]  # fmt: skip
PROMPTS = [f"Tell me about {topic}." for topic in TOPICS]
DPO_LOSSES = ["sigmoid", "hinge", "ipo", "orpo", "simpo"]
STEPS = 30


@pytest.fixture(scope="module")
def preference_data(tmp_path_factory):
    """A dataset_dir with `pairs` (GOOD preferred to BAD for every prompt) and `feedback`
    (each prompt once with GOOD, desirable, and once with BAD, undesirable)."""
    folder = tmp_path_factory.mktemp("preference_data")
    pairs = [{"instruction": p, "chosen": GOOD, "rejected": BAD} for p in PROMPTS]
    feedback = [{"instruction": p, "output": GOOD, "label": True} for p in PROMPTS]
    feedback += [{"instruction": p, "output": BAD, "label": False} for p in PROMPTS]
    info = {
        "pairs": {
            "file_name": "pairs.json",
            "ranking": True,
            "columns": {"prompt": "instruction", "chosen": "chosen", "rejected": "rejected"},
        },
        "feedback": {
            "file_name": "feedback.json",
            "columns": {"prompt": "instruction", "response": "output", "kto_tag": "label"},
        },
    }
    (folder / "pairs.json").write_text(json.dumps(pairs))
    (folder / "feedback.json").write_text(json.dumps(feedback))
    (folder / "dataset_info.json").write_text(json.dumps(info))
    return folder


def preference_config(model_dir, data_dir, out, stage, method, **keys):
    defaults = {
        "stage": stage,
        "finetuning_type": method,
        "dataset_dir": str(data_dir),
        "dataset": "pairs" if stage == "dpo" else "feedback",
        "learning_rate": 5e-3 if method == "lora" else 1e-3,
        "lora_rank": 8,
        "max_steps": STEPS,
        "seed": 0,
        "disable_gradient_checkpointing": True,
        "plot_loss": True,
    }
    return training_config(model_dir, out, **{**defaults, **keys})


@pytest.fixture
def captured(monkeypatch):
    """The stage's Trainer, kept for inspection after the run; and no second model may be
    loaded unless the test allows it."""
    seen = {}
    real = preference.train_and_evaluate

    def spy(trainer, run):
        seen["trainer"] = trainer
        return real(trainer, run)

    monkeypatch.setattr(preference, "train_and_evaluate", spy)
    return seen


def forbid_second_model(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a second model was loaded")

    monkeypatch.setattr("tuneforge.training.reference.load_frozen_model", refuse)


def logged(out):
    lines = (out / "trainer_log.jsonl").read_text().splitlines()
    return [record for record in map(json.loads, lines) if "loss" in record]


def early_and_late(records, key, span=5):
    values = [record[key] for record in records]
    return sum(values[:span]) / span, sum(values[-span:]) / span


def sample_batch(trainer, count=4):
    return trainer.data_collator([trainer.train_dataset[i] for i in range(count)])


def base_model(tiny_model_dir, like):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        tiny_model_dir, attn_implementation=like.config._attn_implementation
    )
    return model.eval()


def check_reference(trainer, tiny_model_dir, stage, loss):
    """LoRA: no reference model, the policy with adapters off scores like the base model.
    full: a separate frozen model that scores like the base model. orpo/simpo: none."""
    from tuneforge.training.loss import sequence_log_probs

    if stage == "dpo" and loss in ("orpo", "simpo"):
        assert trainer.reference is None
        return
    policy = trainer.accelerator.unwrap_model(trainer.model)
    if trainer.finetuning.finetuning_type == "lora":
        assert trainer.reference.model is None
    else:
        assert trainer.reference.model is not None and trainer.reference.model is not policy
        assert not any(p.requires_grad for p in trainer.reference.model.parameters())
    batch = sample_batch(trainer)
    base = base_model(tiny_model_dir, policy)
    with torch.no_grad():
        reference = trainer.reference_log_probs(trainer.model, batch)
        expected, _ = sequence_log_probs(base, batch)
        trained, _ = sequence_log_probs(policy.eval(), batch)
    assert torch.allclose(reference, expected, atol=1e-4)
    assert not torch.allclose(trained, expected, atol=1e-2), "the policy did not move"


def preference_margin(model, tokenizer):
    """log p(GOOD) - log p(BAD) after one of the training prompts."""
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": PROMPTS[0]}], tokenize=False, add_generation_prompt=True
    )
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    scores = []
    for answer in (GOOD, BAD):
        answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([prompt_ids + answer_ids])
        with torch.no_grad():
            log_probs = model(input_ids=ids).logits[0].log_softmax(-1)
        start = len(prompt_ids) - 1
        scores.append(sum(log_probs[start + k, t].item() for k, t in enumerate(answer_ids)))
    return scores[0] - scores[1]


def check_outputs_load_back(out, tiny_model_dir, method):
    """The saved adapter or weights and tokenizer load, and prefer GOOD more than the base."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.chat_template
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    if method == "lora":
        from peft import PeftModel

        assert not (out / "model.safetensors").exists()
        trained = PeftModel.from_pretrained(
            AutoModelForCausalLM.from_pretrained(tiny_model_dir), out
        ).eval()
    else:
        assert not (out / "adapter_config.json").exists()
        trained = AutoModelForCausalLM.from_pretrained(out).eval()
    assert preference_margin(trained, tokenizer) > preference_margin(base, tokenizer)


DPO_KEYS = ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins")


@pytest.mark.parametrize("method", ["lora", "full"])
@pytest.mark.parametrize("loss", DPO_LOSSES)
def test_dpo_learns_the_preference(
    tiny_model_dir, preference_data, tmp_path, captured, monkeypatch, loss, method
):
    if method == "lora" or loss in ("orpo", "simpo"):
        forbid_second_model(monkeypatch)
    out = tmp_path / "out"
    config = preference_config(tiny_model_dir, preference_data, out, "dpo", method, pref_loss=loss)
    assert run_stage(config) == 0

    records = logged(out)
    assert len(records) == STEPS
    for record in records:
        assert math.isfinite(record["loss"])
        for key in (*DPO_KEYS, "logps/chosen", "logps/rejected"):
            assert math.isfinite(record[key]), key
    early, late = early_and_late(records, "rewards/margins")
    assert late > early and late > 0
    early, late = early_and_late(records, "rewards/accuracies")
    assert late >= early and late >= 0.9  # reference-free losses may start at 1 already
    if loss not in ("orpo", "simpo"):  # with a reference, rewards start at exactly 0
        assert records[0]["rewards/margins"] == 0.0 and records[0]["rewards/accuracies"] == 0.0
    assert (out / "training_rewards_accuracies.png").read_bytes().startswith(b"\x89PNG")

    check_reference(captured["trainer"], tiny_model_dir, "dpo", loss)
    check_outputs_load_back(out, tiny_model_dir, method)


@pytest.mark.parametrize("method", ["lora", "full"])
def test_kto_learns_desirable_from_undesirable(
    tiny_model_dir, preference_data, tmp_path, captured, monkeypatch, method
):
    if method == "lora":
        forbid_second_model(monkeypatch)
    out = tmp_path / "out"
    assert run_stage(preference_config(tiny_model_dir, preference_data, out, "kto", method)) == 0

    records = logged(out)
    assert len(records) == STEPS
    for record in records:
        assert math.isfinite(record["loss"]) and math.isfinite(record["kl"])
        assert record["kl"] >= 0
    both = [r for r in records if "rewards/margins" in r]  # a batch may hold one kind only
    assert len(both) >= STEPS // 2
    early, late = early_and_late(both, "rewards/margins")
    assert late > early and late > 0
    assert records[0]["kl"] == 0.0  # the policy starts as its reference
    assert (out / "training_rewards_chosen.png").exists()

    check_reference(captured["trainer"], tiny_model_dir, "kto", None)
    check_outputs_load_back(out, tiny_model_dir, method)


@pytest.mark.parametrize(
    ("stage", "method"), [("dpo", "full"), ("kto", "lora")], ids=["dpo-full", "kto-lora"]
)
def test_precomputed_reference_gives_the_same_run(
    tiny_model_dir, preference_data, tmp_path, monkeypatch, stage, method
):
    losses = {}
    for precompute in (False, True):
        if precompute:  # full tuning scores with the starting policy: no copy at all
            forbid_second_model(monkeypatch)
        out = tmp_path / f"precompute_{precompute}"
        keys = {"max_steps": 8, "precompute_ref_log_probs": precompute, "val_size": 4}
        keys |= {"eval_strategy": "steps", "eval_steps": 4}
        config = preference_config(tiny_model_dir, preference_data, out, stage, method, **keys)
        assert run_stage(config) == 0
        lines = [json.loads(line) for line in (out / "trainer_log.jsonl").read_text().splitlines()]
        losses[precompute] = [r.get("loss", r.get("eval_loss")) for r in lines]
        losses[precompute] = [value for value in losses[precompute] if value is not None]
        assert len(losses[precompute]) == 8 + 3  # every step; evaluations at 4, 8 and the end
        assert any("eval_rewards/chosen" in r for r in lines)
    assert losses[True] == pytest.approx(losses[False], rel=1e-4, abs=1e-5)


def test_kto_refuses_dpo_only_keys(tiny_model_dir, preference_data, tmp_path):
    from tuneforge.errors import ConfigError

    with pytest.raises(ConfigError, match="pref_loss: orpo"):  # with the config, not the run
        preference_config(
            tiny_model_dir, preference_data, tmp_path / "out", "kto", "lora", pref_loss="orpo"
        )


def test_reference_keys_that_would_be_ignored_are_refused(
    tiny_model_dir, preference_data, tmp_path
):
    from tuneforge.errors import ConfigError, UserError

    out = tmp_path / "out"
    with pytest.raises(ConfigError, match="`ref_model` is not used"):  # with the config
        preference_config(
            tiny_model_dir, preference_data, out, "dpo", "full", pref_loss="simpo", ref_model="x"
        )
    quantized = preference_config(
        tiny_model_dir,
        preference_data,
        out,
        "dpo",
        "full",
        ref_model=str(tiny_model_dir),
        ref_model_quantization_bit=4,
    )
    if not torch.cuda.is_available():  # loaded through bitsandbytes, which needs CUDA
        with pytest.raises(UserError, match=r"quantization_bit: 4.*(CUDA GPU|tuneforge\[qlora\])"):
            run_stage(quantized)


def test_ref_model_loads_frozen_with_its_adapters_merged(tiny_model_dir, preference_data, tmp_path):
    from types import SimpleNamespace

    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    from tuneforge.models.tokenizer import load_tokenizer_and_template
    from tuneforge.training.arguments import effective_training_arguments
    from tuneforge.training.reference import load_reference

    # an adapter whose B matrices are random, so that merging it changes the logits
    lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    adapted = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir), lora)
    adapted.save_pretrained(tmp_path / "adapter")
    config = preference_config(
        tiny_model_dir,
        preference_data,
        tmp_path / "out",
        "dpo",
        "full",
        ref_model=str(tiny_model_dir),
        ref_model_adapters=str(tmp_path / "adapter"),
    )
    tokenizer, template = load_tokenizer_and_template(config)
    run = SimpleNamespace(
        args=effective_training_arguments(config), tokenizer=tokenizer, template=template
    )
    reference = load_reference(config, run).model
    assert not reference.training
    assert not any(p.requires_grad for p in reference.parameters())
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    merged = PeftModel.from_pretrained(base, tmp_path / "adapter").merge_and_unload().eval()
    ids = torch.tensor([tokenizer("Tell me about the sea.")["input_ids"]])
    with torch.no_grad():
        expected = merged(input_ids=ids).logits
        assert torch.allclose(reference(input_ids=ids).logits, expected, atol=1e-5)
        plain = AutoModelForCausalLM.from_pretrained(tiny_model_dir)(input_ids=ids).logits
    assert not torch.allclose(plain, expected, atol=1e-3), "the adapter changed nothing"


# --- LLaMA-Factory's example YAMLs ------------------------------------------------------------

# LLaMA-Factory's examples/train_lora/llama3_lora_dpo.yaml and llama3_lora_kto.yaml as they ship
# (the dpo one from a version that evaluates, the kto one from a version with report_to and
# dataloader workers); the test changes only the model, data and output folders and the steps.
LF_DPO_YAML = """\
### model
model_name_or_path: meta-llama/Meta-Llama-3-8B-Instruct

### method
stage: dpo
do_train: true
finetuning_type: lora
lora_target: all
pref_beta: 0.1
pref_loss: sigmoid  # choices: [sigmoid (dpo), orpo, simpo]

### dataset
dataset: dpo_en_demo
template: llama3
cutoff_len: 1024
max_samples: 1000
overwrite_cache: true
preprocessing_num_workers: 16

### output
output_dir: saves/llama3-8b/lora/dpo
logging_steps: 10
save_steps: 500
plot_loss: true
overwrite_output_dir: true

### train
per_device_train_batch_size: 1
gradient_accumulation_steps: 8
learning_rate: 5.0e-6
num_train_epochs: 3.0
lr_scheduler_type: cosine
warmup_ratio: 0.1
bf16: true
ddp_timeout: 180000000

### eval
val_size: 0.1
per_device_eval_batch_size: 1
eval_strategy: steps
eval_steps: 500
"""

LF_KTO_YAML = """\
### model
model_name_or_path: meta-llama/Meta-Llama-3-8B-Instruct
trust_remote_code: true

### method
stage: kto
do_train: true
finetuning_type: lora
lora_rank: 8
lora_target: all
pref_beta: 0.1

### dataset
dataset: kto_en_demo
template: llama3
cutoff_len: 2048
max_samples: 1000
overwrite_cache: true
preprocessing_num_workers: 16
dataloader_num_workers: 4

### output
output_dir: saves/llama3-8b/lora/kto
logging_steps: 10
save_steps: 500
plot_loss: true
overwrite_output_dir: true
report_to: none  # choices: [none, wandb, tensorboard, swanlab, mlflow]

### train
per_device_train_batch_size: 1
gradient_accumulation_steps: 8
learning_rate: 5.0e-6
num_train_epochs: 3.0
lr_scheduler_type: cosine
warmup_ratio: 0.1
bf16: true
ddp_timeout: 180000000

### eval
# val_size: 0.1
# per_device_eval_batch_size: 1
# eval_strategy: steps
# eval_steps: 500
"""


@pytest.mark.skipif(not LF_DEMO_DATA.is_dir(), reason="needs ../shared/lf-demo-data")
@pytest.mark.parametrize("text", [LF_DPO_YAML, LF_KTO_YAML], ids=["dpo", "kto"])
def test_llama_factory_example_yaml_runs_unedited(text, tiny_model_dir, tmp_path):
    config = tmp_path / "example.yaml"
    config.write_text(text)
    out = tmp_path / "out"
    overrides = {
        "model_name_or_path": tiny_model_dir,
        "dataset_dir": LF_DEMO_DATA,
        "output_dir": out,
        "max_steps": 2,
        "data_cache_dir": tmp_path / "cache",  # tuneforge's own: keep the test's cache in tmp
    }
    result = subprocess.run(
        [sys.executable, "-m", "tuneforge", "train", str(config)]
        + [f"{name}={value}" for name, value in overrides.items()],
        cwd=tmp_path,
        env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    results = json.loads((out / "all_results.json").read_text())
    assert math.isfinite(results["train_loss"])
    assert (out / "adapter_model.safetensors").exists()
    if "\nval_size: 0.1" in text:  # the dpo example evaluates: with the preference metrics
        assert 0 <= results["eval_rewards/accuracies"] <= 1
        assert math.isfinite(results["eval_rewards/margins"])
