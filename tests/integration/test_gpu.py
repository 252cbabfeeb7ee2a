"""The same training path on CUDA: bf16, the attention kernels, Liger when installed.

Marked `gpu`: skipped where no CUDA device exists (CI never has one); run them on a GPU machine
with `pytest -m gpu`, and record the benchmark figures in docs/benchmarks.md.
"""

from __future__ import annotations

import importlib.util
import json
import math

import pytest
import torch

from conftest import training_config
from tuneforge.stages import run_stage

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def train(tiny_model_dir, tmp_path, **keys):
    defaults = {
        "per_device_train_batch_size": 8,
        "learning_rate": 5e-3,
        "max_steps": 20,
        "finetuning_type": "full",
        "bf16": True,
    }
    assert run_stage(training_config(tiny_model_dir, tmp_path / "out", **{**defaults, **keys})) == 0
    lines = (tmp_path / "out" / "trainer_log.jsonl").read_text().splitlines()
    return [json.loads(line)["loss"] for line in lines if "loss" in json.loads(line)]


@pytest.mark.parametrize("attention", ["auto", "sdpa", "eager"])
def test_bf16_training_learns_with_each_attention(tiny_model_dir, tmp_path, attention):
    losses = train(tiny_model_dir, tmp_path, flash_attn=attention)
    assert all(math.isfinite(loss) for loss in losses)
    assert sum(losses[-5:]) < 0.9 * sum(losses[:5])


def test_varlen_attention_isolates_examples_on_cuda(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    from tuneforge.models.attention import register_varlen_attention
    from tuneforge.training.collate import PaddingFreeCollator
    from tuneforge.training.loss import token_losses

    model = (
        AutoModelForCausalLM.from_pretrained(
            tiny_model_dir, attn_implementation=register_varlen_attention()
        )
        .cuda()
        .eval()
    )
    features = [{"input_ids": list(range(10, 10 + n))} for n in (5, 17, 9)]

    def losses(batch_features):
        batch = PaddingFreeCollator()(batch_features).to("cuda")
        with torch.no_grad():
            return token_losses(model, batch)[0]

    packed = losses(features)
    alone = torch.cat([losses([feature]) for feature in features])
    torch.testing.assert_close(packed, alone, rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(importlib.util.find_spec("flash_attn") is None, reason="flash-attn absent")
def test_flash_attention_2_trains(tiny_model_dir, tmp_path):
    losses = train(tiny_model_dir, tmp_path, flash_attn="fa2")
    assert sum(losses[-5:]) < 0.9 * sum(losses[:5])


@pytest.mark.skipif(importlib.util.find_spec("liger_kernel") is None, reason="liger absent")
def test_liger_kernels_train(tiny_model_dir, tmp_path):
    losses = train(tiny_model_dir, tmp_path, enable_liger_kernel=True)
    assert sum(losses[-5:]) < 0.9 * sum(losses[:5])


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="bitsandbytes absent")
@pytest.mark.parametrize("bits", [4, 8])
def test_qlora_trains_on_a_quantized_base(tiny_model_dir, tmp_path, bits):
    losses = train(
        tiny_model_dir, tmp_path, finetuning_type="lora", quantization_bit=bits, learning_rate=1e-2
    )
    assert sum(losses[-5:]) < 0.9 * sum(losses[:5])
    adapter = tmp_path / "out" / "adapter_model.safetensors"
    assert adapter.is_file()
