"""Sharded training on CPU: DeepSpeed ZeRO-2, ZeRO-3 (full and LoRA) and FSDP (1 and 2) on two
gloo processes give the losses, gradients and weights of one process on the same global batch;
the fused output layer + cross-entropy steps aside when the output weight is sharded.

What runs on CPU, and so how these tests launch:

- DeepSpeed (0.19) picks its CPU accelerator by itself when there is no GPU, and talks through
  torch.distributed with gloo (oneCCL only when oneccl_bindings_for_pytorch is installed).
- ZeRO-3 builds the model inside `deepspeed.zero.Init`, whose config reads the world size from
  deepspeed.comm. On CPU tuneforge trains with `use_cpu` (accelerate's MULTI_CPU: gloo starts,
  deepspeed.comm does not), so the load fails: "train_batch_size is not equal to
  micro_batch_per_gpu * gradient_acc_step * world_size 4 != 1 * 2 * 1". The ZeRO-3 runs
  therefore start deepspeed.comm first (`DS_LAUNCH`), as `deepspeed.init_distributed("gloo")`
  after the training arguments would in tuneforge itself.
- Every launch skips DeepSpeed's shared-memory all-reduce kernel: a C++ build on first use
  (80 s on two cores, then cached) that only `inference_all_reduce` uses; training
  collectives are gloo's either way.
- transformers' `fsdp:` key does nothing on CPU (accelerate turns FSDP on for GPU kinds only:
  the run is plain DDP), so FSDP is applied with torch itself around tuneforge's loss.

Tolerances, all float32: the processes reduce the same sums in another order, which moves
values by a few float32 ulps (observed: losses equal to 1e-6, weights to 1e-7 after two steps).
SGD with learning rate 1 makes the second step's loss and the weights follow the gradients
one to one (Adam would hide a scaled gradient), and clipping is off so that it cannot hide one
either. DeepSpeed computes the gradient norm it reports its own way: 5e-5 above torch's on the
same gradients (the weights agree to 1e-7), hence 1e-4 for norms.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from conftest import DATA_DIR, REPO
from tuneforge.utils.devices import device_count

DEEPSPEED = importlib.util.find_spec("deepspeed") is not None
CPU_ONLY = device_count() == 0
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}
STEPS = 2

# torchrun runs this instead of `-m tuneforge`: the same CLI, after the two start-up steps
# that the module docstring explains.
DS_LAUNCH = """
import importlib, os, sys
import deepspeed
# the module itself: `deepspeed.comm.torch` is the torch package that deepspeed.comm imports
backend = importlib.import_module("deepspeed.comm.torch")
backend.build_shm_op = lambda: None  # an inference-only kernel, and a long C++ build
if os.environ.get("START_DEEPSPEED_COMM"):
    deepspeed.init_distributed(dist_backend="gloo")
from tuneforge.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def config_dict(model_dir: Path, method: str, per_device: int, output_dir: Path) -> dict:
    """One global batch of 4 examples a step: 2 per device x 2 accumulation steps in one
    process, or 1 x 2 x 2 processes, in the same order."""
    return {
        "model_name_or_path": str(model_dir),
        "template": "qwen",
        "stage": "sft",
        "do_train": True,
        "finetuning_type": method,
        "dataset": "alpaca_demo",
        "dataset_dir": str(DATA_DIR),
        "data_cache_dir": str(output_dir.parent / "cache"),
        "cutoff_len": 96,
        "max_samples": 4 * STEPS,
        "output_dir": str(output_dir),
        "save_strategy": "no",
        "logging_steps": 1,
        "report_to": "none",
        "per_device_train_batch_size": per_device,
        "gradient_accumulation_steps": 2,
        "optim": "sgd",
        "learning_rate": 1.0,
        "lr_scheduler_type": "constant",
        "max_grad_norm": 1e6,  # logged, never clipping
        "max_steps": STEPS,
        "disable_shuffling": True,
        "seed": 42,
    }


def trained_losses(output_dir: Path) -> list[tuple[float, float]]:
    from tuneforge.training.callbacks import read_trainer_log

    return [(r["loss"], r["grad_norm"]) for r in read_trainer_log(output_dir) if "loss" in r]


def starting_adapter(model_dir: Path, folder: Path) -> Path:
    """A LoRA adapter with random A and B: a new adapter's A comes from the RNG, which ZeRO-3's
    loading (under zero.Init) leaves in another state than a plain load, and B = 0 would
    leave the first step blind to A."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(model_dir),
        LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear"),
    )
    for name, parameter in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(parameter, std=0.05)
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def references(tiny_model_dir, tmp_path_factory) -> dict[str, dict]:
    """Per method, the keys of one process's run (DDP's reference too: test_distributed.py)
    and its output folder, which the sharded runs compare with."""
    from tuneforge.config.loader import build_config
    from tuneforge.stages import run_stage

    folder = tmp_path_factory.mktemp("sharded")
    adapter = starting_adapter(tiny_model_dir, folder / "adapter")
    runs = {}
    for method in ("full", "lora"):
        keys = config_dict(tiny_model_dir, method, 2, folder / f"one-{method}")
        if method == "lora":
            keys["adapter_name_or_path"] = str(adapter)
        assert run_stage(build_config(keys)) == 0
        runs[method] = keys
    return runs


def torchrun(script: Path, args: list[str], **env: str) -> subprocess.CompletedProcess:
    from tuneforge.cli.launch import free_port

    command = [*TORCHRUN, "--master_port", str(free_port()), str(script), *args]
    return subprocess.run(
        command, capture_output=True, text=True, env={**ENV, **env}, timeout=300, cwd=REPO
    )


# ---------------------------------------------------------------------------------------------
# The fused output layer and the lean MLP with a ZeRO-3 layout, in one process


def tiny_batch():
    from tuneforge.data.batch import PaddingFreeBatch

    ids = list(range(10, 30))
    return PaddingFreeBatch.from_sequences([(ids, [-100] * 5 + ids[5:])])


def test_a_zero3_placeholder_output_weight_is_never_read(tiny_model_dir, caplog):
    """ZeRO-3 leaves each parameter as a 0-element placeholder carrying `ds_id`; only its
    module's forward sees the gathered weight. Reading it for the fused loss (or for the
    check that the logits are plain) was the reported `size mismatch ... vec (0)`."""
    from transformers import AutoModelForCausalLM

    from tuneforge.training.linear_cross_entropy import fused_output_layer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    weight = model.get_output_embeddings().weight
    weight.data = torch.empty(0)
    weight.ds_id = 0  # what deepspeed.zero.Init sets on every parameter it partitions
    batch = tiny_batch()
    keep = batch.trained_positions()
    with caplog.at_level(logging.INFO, logger="tuneforge"):
        for _ in range(2):  # decided once per model, and said once
            assert fused_output_layer(model, batch.model_inputs(), keep) is None
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Loss:")]
    assert said == [
        "Loss: unfused, through the output layer's own forward "
        "(DeepSpeed ZeRO-3 partitions its weight)."
    ]


def test_a_plain_model_keeps_the_fused_loss_and_says_so(tiny_model_dir, caplog):
    from transformers import AutoModelForCausalLM

    from tuneforge.training.linear_cross_entropy import fused_output_layer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    batch = tiny_batch()
    with caplog.at_level(logging.INFO, logger="tuneforge"):
        head = fused_output_layer(model, batch.model_inputs(), batch.trained_positions())
    assert head is model.get_output_embeddings()
    assert "Loss: output layer fused with cross-entropy (no logits kept)." in caplog.messages


def test_module_hooks_such_as_zero3s_send_the_lean_mlp_through_down_proj(tiny_model_dir):
    """ZeRO-3 gathers a weight in forward hooks on its own module, which it puts on every
    module: the lean MLP must then call down_proj rather than read its weight."""
    from transformers import AutoModelForCausalLM

    from tuneforge.models.lean_layers import apply_lean_layers

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    mlp = model.model.layers[0].mlp
    x = torch.randn(1, 5, model.config.hidden_size)
    expected = mlp(x)
    apply_lean_layers(model)
    calls = []
    mlp.down_proj.register_forward_pre_hook(lambda module, args: calls.append(module))
    torch.testing.assert_close(mlp(x), expected)
    assert calls == [mlp.down_proj]


# ---------------------------------------------------------------------------------------------
# DeepSpeed ZeRO on two processes


def ds_run(tmp_path: Path, reference: dict, stage: int, **env: str) -> tuple[Path, str]:
    """The reference's config, 1 example per device, under `ds_z{stage}_config.json`."""
    script = tmp_path / "ds_launch.py"
    script.write_text(DS_LAUNCH)
    keys = {**reference, "per_device_train_batch_size": 1, "output_dir": str(tmp_path / "out")}
    keys["deepspeed"] = str(REPO / "examples" / "deepspeed" / f"ds_z{stage}_config.json")
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump(keys))
    result = torchrun(script, ["train", str(config)], **env)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "effective batch 4 (1 x 2 x 2 devices)" in result.stderr
    return Path(keys["output_dir"]), result.stderr


@pytest.mark.slow
@pytest.mark.skipif(not (DEEPSPEED and CPU_ONLY), reason="DeepSpeed on CPU (gloo)")
@pytest.mark.parametrize(
    ("stage", "method", "fused"),
    [(2, "full", True), (3, "full", False), (3, "lora", False)],
    ids=["zero2-full", "zero3-full", "zero3-lora"],
)
def test_deepspeed_trains_as_one_process(tmp_path, references, stage, method, fused):
    env = {"START_DEEPSPEED_COMM": "1"} if stage == 3 else {}
    output_dir, stderr = ds_run(tmp_path, references[method], stage, **env)
    want = Path(references[method]["output_dir"])
    loss_path = "output layer fused" if fused else "unfused, through the output layer's own"
    assert f"Loss: {loss_path}" in stderr  # rank 0's line; ranks > 0 log warnings only
    got, expected = trained_losses(output_dir), trained_losses(want)
    assert len(got) == len(expected) == STEPS
    assert [loss for loss, _ in got] == pytest.approx([loss for loss, _ in expected], rel=1e-5)
    assert [norm for _, norm in got] == pytest.approx([n for _, n in expected], rel=1e-4)
    weights = "model.safetensors" if method == "full" else "adapter_model.safetensors"
    a, b = load_file(output_dir / weights), load_file(want / weights)
    assert b.keys() <= a.keys()  # ZeRO-2 also writes the tied lm_head.weight
    for name in b:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# FSDP on two processes, applied with torch

FSDP_STEP = """
import json, logging, sys
import torch, torch.distributed as dist
from transformers import AutoModelForCausalLM
from tuneforge.data.batch import PaddingFreeBatch
from tuneforge.models.attention import register_varlen_attention
from tuneforge.models.lean_layers import apply_lean_layers
from tuneforge.training.loss import language_model_loss

model_dir, out = sys.argv[1:]
logging.basicConfig(level=logging.INFO, format="%(message)s")
dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()

def load():
    attention = register_varlen_attention()
    model = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation=attention)
    apply_lean_layers(model)
    return model

def batch(index):
    g = torch.Generator().manual_seed(index)
    rows = [torch.randint(0, 4000, (n,), generator=g).tolist() for n in (13, 8)]
    return PaddingFreeBatch.from_sequences([(ids, [-100] * 3 + ids[3:]) for ids in rows])

batches = [batch(i) for i in range(world)]
total = sum(b.trained_positions().numel() for b in batches)

# the reference: every rank's batch in this one process, fused loss, one SGD step
reference = load()
ref_loss = sum(language_model_loss(reference, b, total)[0] for b in batches)
ref_loss.backward()
torch.optim.SGD(reference.parameters(), lr=1.0).step()

want = dict(reference.named_parameters())
change = max((want[n] - p).abs().max().item() for n, p in load().named_parameters())


def fsdp1(model):
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy

    policy = ModuleWrapPolicy({type(model.model.layers[0])})
    cpu = torch.device("cpu")
    return FSDP(model, auto_wrap_policy=policy, device_id=cpu, use_orig_params=True)


def fsdp2(model):
    from torch.distributed.fsdp import fully_shard

    for layer in model.model.layers:
        fully_shard(layer)
    return fully_shard(model)


def full_weights(kind, wrapped):
    if kind == "fsdp2":
        return {n: p.full_tensor() for n, p in wrapped.named_parameters()}
    with type(wrapped).summon_full_params(wrapped):
        named = wrapped.named_parameters()
        return {n.replace("_fsdp_wrapped_module.", ""): p.clone() for n, p in named}


results = {}
for kind, shard in (("fsdp1", fsdp1), ("fsdp2", fsdp2)):
    wrapped = shard(load())
    loss, _ = language_model_loss(wrapped, batches[rank], total)
    (loss * world).backward()  # FSDP averages gradients over ranks, as the Trainer expects
    torch.optim.SGD(wrapped.parameters(), lr=1.0).step()
    summed = loss.detach().clone()
    dist.all_reduce(summed)
    after = full_weights(kind, wrapped)
    error = max((after[n] - want[n]).abs().max().item() for n in want)
    results[kind] = {"loss": summed.item(), "names": sorted(after), "error": error}
results |= {"reference": ref_loss.item(), "want": sorted(want), "change": change}
with open(f"{out}.{rank}.json", "w") as f:
    json.dump(results, f)
"""


@pytest.mark.slow
@pytest.mark.skipif(not CPU_ONLY, reason="checks the CPU (gloo) path")
def test_fsdp_step_equals_one_process(tiny_model_dir, tmp_path):
    """FSDP shards the output weight (FSDP1: views of a flat shard; FSDP2: a DTensor): the
    fused loss reading it gave `size mismatch ... vec (131104)` under FSDP1, so the loss goes
    through the layer's forward; the lean layers inside a sharded decoder layer stay exact."""
    script = tmp_path / "fsdp_step.py"
    script.write_text(FSDP_STEP)
    out = tmp_path / "result"
    result = torchrun(script, [str(tiny_model_dir), str(out)])
    assert result.returncode == 0, result.stderr[-4000:]
    said = [line for line in result.stderr.splitlines() if line.startswith("Loss:")]
    fused = "Loss: output layer fused with cross-entropy (no logits kept)."
    unfused = "Loss: unfused, through the output layer's own forward (FSDP shards its weight)."
    assert sorted(said) == [fused] * 2 + [unfused] * 4  # per rank: reference, FSDP1, FSDP2
    for rank in (0, 1):
        got = json.loads(Path(f"{out}.{rank}.json").read_text())
        assert got["change"] > 0.05  # what one SGD step moved the weights by
        for kind in ("fsdp1", "fsdp2"):
            assert got[kind]["loss"] == pytest.approx(got["reference"], rel=1e-6), kind
            assert got[kind]["names"] == got["want"], kind
            assert got[kind]["error"] < 1e-6, kind  # float32 rounding of the reductions
