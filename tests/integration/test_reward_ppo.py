"""Reward modelling and PPO on the tiny model, in process: a reward model learns a separable
preference set the test builds and scores it the same after loading back; PPO trains a policy
against that reward model (LoRA adapter, full model, or an HTTP endpoint), logs its metrics,
changes the policy's weights, saves output that loads back, and resumes a run exactly.
A LLaMA-Factory reward YAML runs through the CLI unedited but for paths."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest
import torch
from safetensors.torch import load_file

from conftest import LF_DEMO_DATA, training_config
from tuneforge.models.value_head import ModelWithValueHead, load_value_head, sequence_scores
from tuneforge.stages import run_stage
from tuneforge.training.preference_collate import PairwiseCollator

pytestmark = pytest.mark.slow

TOPICS = ["the sea", "a cat", "the moon", "bread", "music", "rain", "a tree", "the city"]
PPO_STEPS = 3


def config(model_dir, data_dir, output_dir, **keys):
    defaults = {
        "dataset_dir": str(data_dir),
        "seed": 0,
        "disable_gradient_checkpointing": True,
        "overwrite_output_dir": True,
    }
    return training_config(model_dir, output_dir, **{**defaults, **keys})


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """Pairs a reward model can separate (the chosen answers are friendly, the rejected ones
    rude) and prompts for PPO, in LLaMA-Factory's alpaca layout."""
    folder = tmp_path_factory.mktemp("data")
    pairs = [
        {
            "instruction": f"Tell me about {topic}.",
            "chosen": f"Happy to help! {topic} is lovely.",
            "rejected": f"No. {topic} bad bad bad.",
        }
        for topic in TOPICS * 3
    ]
    prompts = [{"instruction": f"Say something about {t}.", "output": "Sure."} for t in TOPICS]
    (folder / "pairs.json").write_text(json.dumps(pairs), encoding="utf-8")
    (folder / "prompts.json").write_text(json.dumps(prompts), encoding="utf-8")
    catalogue = {
        "pairs": {
            "file_name": "pairs.json",
            "ranking": True,
            "columns": {"prompt": "instruction", "chosen": "chosen", "rejected": "rejected"},
        },
        "prompts": {"file_name": "prompts.json"},
    }
    (folder / "dataset_info.json").write_text(json.dumps(catalogue), encoding="utf-8")
    return folder


def rm_config(tiny_model_dir, data_dir, output_dir, method):
    return config(
        tiny_model_dir,
        data_dir,
        output_dir,
        stage="rm",
        dataset="pairs",
        finetuning_type=method,
        learning_rate=1e-3,
        max_steps=30,
        val_size=0.25,
        do_eval=True,
        do_predict=True,  # each held-out pair's scores in generated_predictions.jsonl
        per_device_eval_batch_size=4,
    )


@pytest.fixture(scope="module")
def reward_models(tiny_model_dir, data_dir, tmp_path_factory):
    """A LoRA and a full reward model trained on the separable pairs: method -> output_dir."""
    outputs = {}
    for method in ("lora", "full"):
        out = tmp_path_factory.mktemp(f"rm_{method}") / "out"
        assert run_stage(rm_config(tiny_model_dir, data_dir, out, method)) == 0
        outputs[method] = out
    return outputs


def log_records(output_dir):
    lines = (output_dir / "trainer_log.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


def mean(values):
    return sum(values) / len(values)


def load_reward_model(out, tiny_model_dir, method):
    from transformers import AutoModelForCausalLM

    if method == "lora":
        from peft import PeftModel

        base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="eager")
        language_model = PeftModel.from_pretrained(base, out)
    else:
        language_model = AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager")
    return ModelWithValueHead(language_model, load_value_head(out)).eval()


@pytest.mark.parametrize("method", ["lora", "full"])
def test_reward_model_learns_and_scores_the_same_after_loading(
    reward_models, tiny_model_dir, data_dir, method
):
    out = reward_models[method]
    steps = [r for r in log_records(out) if "loss" in r]
    assert len(steps) == 30 and all(math.isfinite(r["loss"]) for r in steps)
    assert mean([r["loss"] for r in steps[-5:]]) < 0.5 * mean([r["loss"] for r in steps[:5]])
    margins = [r["rewards/margins"] for r in steps]
    assert mean(margins[-5:]) > mean(margins[:5]) + 1.0, margins
    accuracies = [r["rewards/accuracies"] for r in steps]
    assert mean(accuracies[-5:]) == 1.0
    results = json.loads((out / "all_results.json").read_text())
    assert results["eval_accuracy"] == 1.0  # LLaMA-Factory's name for pairs ranked right

    # the saved files: adapter or whole model as transformers writes them, plus the head
    head = load_file(out / "value_head.safetensors")
    assert set(head) == {"v_head.summary.weight", "v_head.summary.bias"}
    if method == "lora":
        assert (out / "adapter_model.safetensors").is_file()
        assert not (out / "model.safetensors").exists()
    else:
        base = load_file(tiny_model_dir / "model.safetensors")
        assert load_file(out / "model.safetensors").keys() == base.keys()

    # loaded back, it ranks every held-out pair right, with the scores evaluation reported
    from tuneforge.data.pipeline import prepare_data
    from tuneforge.models.tokenizer import load_tokenizer_and_template

    cfg = rm_config(tiny_model_dir, data_dir, out, method)  # the same split, from cache
    tokenizer, template = load_tokenizer_and_template(cfg)
    held_out = prepare_data(cfg, tokenizer, template).eval
    model = load_reward_model(out, tiny_model_dir, method)
    with torch.no_grad():
        chosen, rejected = sequence_scores(model, PairwiseCollator()(list(held_out))).chunk(2)
    assert (chosen > rejected).all()
    assert chosen.mean().item() == pytest.approx(results["eval_rewards/chosen"], abs=2e-3)
    assert rejected.mean().item() == pytest.approx(results["eval_rewards/rejected"], abs=2e-3)
    lines = (out / "generated_predictions.jsonl").read_text(encoding="utf-8").splitlines()
    predicted = [json.loads(line) for line in lines]
    assert [p["chosen"] for p in predicted] == pytest.approx(chosen.tolist(), abs=2e-3)
    assert [p["rejected"] for p in predicted] == pytest.approx(rejected.tolist(), abs=2e-3)
    assert results["predict_accuracy"] == 1.0


class ScoreHandler(BaseHTTPRequestHandler):
    """A reward API in LLaMA-Factory's protocol: friendly texts (with "!") score high."""

    texts: ClassVar[list[str]] = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        ScoreHandler.texts += body["messages"]
        scores = [float(text.count("!")) - 0.01 * len(text) for text in body["messages"]]
        answer = json.dumps({"scores": scores}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args):
        pass


@pytest.fixture
def score_url():
    server = ThreadingHTTPServer(("127.0.0.1", 0), ScoreHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    ScoreHandler.texts = []
    yield f"http://127.0.0.1:{server.server_port}/v1/score/evaluation"
    server.shutdown()
    server.server_close()


def ppo_config(tiny_model_dir, data_dir, out, method, reward_model, reward_type, **keys):
    defaults = {
        "stage": "ppo",
        "dataset": "prompts",
        "finetuning_type": method,
        "reward_model": reward_model,
        "reward_model_type": reward_type,
        "learning_rate": 1e-3,
        "max_steps": PPO_STEPS,
        "per_device_train_batch_size": 2,
        "gradient_accumulation_steps": 2,
        "ppo_epochs": 2,
        "max_new_tokens": 8,
    }
    return config(tiny_model_dir, data_dir, out, **{**defaults, **keys})


@pytest.mark.parametrize(
    ("method", "reward_type"), [("lora", "lora"), ("full", "full"), ("lora", "api")]
)
def test_ppo_trains_the_policy_and_saves_it(
    reward_models, tiny_model_dir, data_dir, tmp_path, score_url, method, reward_type
):
    reward_model = score_url if reward_type == "api" else str(reward_models[reward_type])
    out = tmp_path / "out"
    cfg = ppo_config(tiny_model_dir, data_dir, out, method, reward_model, reward_type)
    assert run_stage(cfg) == 0

    steps = [r for r in log_records(out) if "loss" in r]
    assert [r["current_steps"] for r in steps] == list(range(1, PPO_STEPS + 1))
    for record in steps:
        for key in ("loss", "reward", "ppo/loss/policy", "ppo/loss/value", "ppo/kl", "ppo/kl_coef"):
            assert math.isfinite(record[key]), (key, record)
        assert record["ppo/loss/value"] > 0
    # the policy starts as the reference (LoRA B = 0, or the same full weights): no KL yet
    assert steps[0]["ppo/kl"] == pytest.approx(0.0, abs=1e-6)
    assert steps[-1]["ppo/kl_coef"] != 0.2  # the adaptive controller moved

    from transformers import AutoModelForCausalLM, AutoTokenizer

    head = load_value_head(out)  # the critic, saved like a reward model's head
    assert head is not None
    before = load_file(tiny_model_dir / "model.safetensors")
    if method == "lora":
        from peft import PeftModel

        adapter = load_file(out / "adapter_model.safetensors")
        assert any(t.abs().sum() > 0 for n, t in adapter.items() if "lora_B" in n)
        assert not (out / "reward").exists(), "the reward adapter is not part of the policy"
        policy = PeftModel.from_pretrained(
            AutoModelForCausalLM.from_pretrained(tiny_model_dir), out
        )
    else:
        after = load_file(out / "model.safetensors")
        assert after.keys() == before.keys()
        assert any(not torch.equal(before[n], after[n]) for n in before)
        policy = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    ids = tokenizer("Say something about rain.", return_tensors="pt")["input_ids"]
    assert policy.generate(ids, max_new_tokens=4, do_sample=False).shape[1] > ids.shape[1]
    if reward_type == "api":
        # every rollout was scored: PPO_STEPS buffers of 2 x 2 prompts, as templated text
        assert len(ScoreHandler.texts) == PPO_STEPS * 4
        assert all(
            t.startswith("<|im_start|>") and "Say something about" in t for t in ScoreHandler.texts
        )


def test_ppo_resumes_exactly_where_it_stopped(reward_models, tiny_model_dir, data_dir, tmp_path):
    keys = {"save_strategy": "steps", "save_steps": 2, "max_steps": 4}
    reward = str(reward_models["lora"])
    straight = tmp_path / "straight"
    cfg = ppo_config(tiny_model_dir, data_dir, straight, "lora", reward, "lora", **keys)
    assert run_stage(cfg) == 0
    checkpoint = straight / "checkpoint-2"
    assert (checkpoint / "tuneforge_complete").is_file()
    assert json.loads((checkpoint / "ppo_state.json").read_text())["kl_coef"] > 0

    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(checkpoint, resumed / "checkpoint-2")
    keys["overwrite_output_dir"] = False
    cfg = ppo_config(tiny_model_dir, data_dir, resumed, "lora", reward, "lora", **keys)
    assert run_stage(cfg) == 0  # resumes from checkpoint-2 on its own
    expected = [r for r in log_records(straight) if "loss" in r][2:]
    again = [r for r in log_records(resumed) if "loss" in r]
    assert [r["current_steps"] for r in again] == [3, 4]
    for first, second in zip(expected, again):
        for key in ("loss", "reward", "ppo/kl", "ppo/kl_coef"):
            assert second[key] == pytest.approx(first[key], rel=1e-4, abs=1e-6), key


LLAMA_FACTORY_REWARD_YAML = """\
### model
model_name_or_path: meta-llama/Meta-Llama-3-8B-Instruct
trust_remote_code: true

### method
stage: rm
do_train: true
finetuning_type: lora
lora_rank: 8
lora_target: all

### dataset
dataset: dpo_en_demo
template: llama3
cutoff_len: 2048
max_samples: 1000
overwrite_cache: true
preprocessing_num_workers: 16

### output
output_dir: saves/llama3-8b/lora/reward
logging_steps: 10
save_steps: 500
plot_loss: true
overwrite_output_dir: true

### train
per_device_train_batch_size: 1
gradient_accumulation_steps: 8
learning_rate: 1.0e-4
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


@pytest.mark.skipif(not LF_DEMO_DATA.is_dir(), reason="LLaMA-Factory demo data (../shared) absent")
def test_llama_factory_reward_yaml_runs_unedited(tiny_model_dir, tmp_path):
    """LLaMA-Factory's examples/train_lora/llama3_lora_reward.yaml, as published; only the model,
    the data folder and the output folder change, plus the run's length, on the command line."""
    path = tmp_path / "llama3_lora_reward.yaml"
    path.write_text(LLAMA_FACTORY_REWARD_YAML, encoding="utf-8")
    out = tmp_path / "out"
    overrides = {
        "model_name_or_path": str(tiny_model_dir),
        "dataset_dir": str(LF_DEMO_DATA),
        "output_dir": str(out),
        "data_cache_dir": str(tmp_path / "cache"),
        "max_steps": "2",
        "logging_steps": "1",
    }
    result = subprocess.run(
        [sys.executable, "-m", "tuneforge", "train", str(path)]
        + [f"{k}={v}" for k, v in overrides.items()],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    steps = [r for r in log_records(out) if "loss" in r]
    assert len(steps) == 2 and all(math.isfinite(r["loss"]) for r in steps)
    assert all("rewards/accuracies" in r for r in steps)
    assert (out / "adapter_model.safetensors").is_file()
    assert load_value_head(out) is not None
    assert (out / "training_loss.png").read_bytes().startswith(b"\x89PNG")


def test_ppo_refuses_a_reward_model_without_value_head(tiny_model_dir, data_dir, tmp_path):
    from tuneforge.errors import ModelError

    cfg = ppo_config(
        tiny_model_dir, data_dir, tmp_path / "out", "full", str(tiny_model_dir), "full"
    )
    with pytest.raises(ModelError, match=r"`reward_model`: .* has no value_head.safetensors"):
        run_stage(cfg)


def test_ppo_refuses_evaluation_data(tiny_model_dir, data_dir, tmp_path):
    from tuneforge.errors import NotAvailableError

    with pytest.raises(NotAvailableError, match="val_size"):  # with the config, not the run
        ppo_config(
            tiny_model_dir, data_dir, tmp_path / "out", "lora", "unused", "lora", val_size=0.2
        )
