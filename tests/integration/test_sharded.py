"""Sharded training on CPU: DeepSpeed ZeRO-2, ZeRO-3 (full, LoRA from a given or a new
adapter, MoE, rm) and FSDP (1 and 2) on two gloo processes give the losses, gradients and
weights of one process on the same global batch; the fused output layer + cross-entropy steps
aside when the output weight is sharded.

What runs on CPU, and so how these tests launch:

- DeepSpeed (0.19) picks its CPU accelerator by itself when there is no GPU, and talks through
  torch.distributed with gloo (oneCCL only when oneccl_bindings_for_pytorch is installed).
- ZeRO-3 builds the model inside `deepspeed.zero.Init`, whose config reads the world size from
  deepspeed.comm. On CPU tuneforge trains with `use_cpu` (accelerate's MULTI_CPU: gloo starts,
  deepspeed.comm does not), so that load failed with "train_batch_size is not equal to
  micro_batch_per_gpu * gradient_acc_step * world_size 4 != 1 * 2 * 1". tuneforge now starts
  deepspeed.comm over gloo itself (`training/arguments.py: start_deepspeed_comm`, before the
  training arguments), under torchrun or, as a world of one, without a launcher; the runs here
  are the plain `tuneforge train` of the CLI.
- Every launch skips DeepSpeed's shared-memory all-reduce kernel (`DS_LAUNCH`): a C++ build on
  first use (80 s on two cores, then cached) that only `inference_all_reduce` uses; training
  collectives are gloo's either way, so the skip changes no number, only CI's time.
- transformers' `fsdp:` key does nothing on CPU (accelerate turns FSDP on for GPU kinds only:
  the run would be plain DDP), so tuneforge refuses it there (tests/unit/
  test_training_arguments.py), and the FSDP test applies FSDP with torch itself around
  tuneforge's loss.

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

# torchrun runs this instead of `-m tuneforge`: the same CLI, without building the shared-memory
# kernel (the module docstring says why)
DS_LAUNCH = """
import importlib, sys
# the module itself: `deepspeed.comm.torch` is the torch package that deepspeed.comm imports
backend = importlib.import_module("deepspeed.comm.torch")
backend.build_shm_op = lambda: None  # an inference-only kernel, and a long C++ build
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
    """A LoRA adapter with random A and B: B = 0, as in a new adapter, would leave the first
    step blind to A."""
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


def tiny_moe_config(**keys):
    """A two-layer Qwen2-MoE: four experts, two per token, and a shared expert."""
    from transformers import Qwen2MoeConfig

    sizes = {"hidden_size": 32, "intermediate_size": 64, "moe_intermediate_size": 32}
    return Qwen2MoeConfig(
        **sizes,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_experts=4,
        num_experts_per_tok=2,
        shared_expert_intermediate_size=32,
        **keys,
    )


def save_tiny_moe(folder: Path) -> Path:
    """tiny_moe_config with the tiny Qwen2 tokenizer, as test_moe.py saves its models."""
    from transformers import AutoModelForCausalLM

    from tuneforge.models.tiny import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer("qwen2", 1024)
    config = tiny_moe_config(
        vocab_size=len(tokenizer),
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


class References:
    """One process's runs, each trained on first use, by name; `keys(name)` gives the run's
    keys, its output folder the one the sharded runs compare with.

    full / lora: sft of the tiny model (DDP's reference too: test_distributed.py), lora from
    `starting_adapter`; new-lora: a new adapter; moe: sft of a tiny MoE model; rm: a reward
    model (full) on the demo pairs.
    """

    def __init__(self, model_dir: Path, folder: Path) -> None:
        self.model_dir, self.folder = model_dir, folder
        self.runs: dict[str, dict] = {}

    def keys(self, name: str) -> dict:
        if name not in self.runs:
            self.runs[name] = self._train(name)
        return dict(self.runs[name])

    def _train(self, name: str) -> dict:
        from tuneforge.config.loader import build_config
        from tuneforge.stages import run_stage

        model_dir = save_tiny_moe(self.folder / "moe-model") if name == "moe" else self.model_dir
        method = "lora" if "lora" in name else "full"
        keys = config_dict(model_dir, method, 2, self.folder / f"one-{name}")
        if name == "lora":
            keys["adapter_name_or_path"] = str(starting_adapter(model_dir, self.folder / "adapter"))
        if name == "rm":
            keys |= {"stage": "rm", "dataset": "dpo_demo"}
        assert run_stage(build_config(keys)) == 0
        return keys


@pytest.fixture(scope="module")
def references(tiny_model_dir, tmp_path_factory) -> References:
    return References(tiny_model_dir, tmp_path_factory.mktemp("sharded"))


def torchrun(script: Path, args: list[str], **env: str) -> subprocess.CompletedProcess:
    from tuneforge.cli.launch import free_port

    command = [*TORCHRUN, "--master_port", str(free_port()), str(script), *args]
    return subprocess.run(
        command, capture_output=True, text=True, env={**ENV, **env}, timeout=300, cwd=REPO
    )


def assert_same_weights(got: dict, want: dict, rtol: float = 1e-5, atol: float = 1e-6) -> None:
    assert got.keys() == want.keys()
    for name in want:
        assert got[name].numel() > 0, name
        torch.testing.assert_close(got[name], want[name], rtol=rtol, atol=atol, msg=name)


# ---------------------------------------------------------------------------------------------
# The fused output layer, the lean MLP, MoE leaf modules and tied weights with a ZeRO layout,
# in one process


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


@pytest.mark.skipif(not DEEPSPEED, reason="needs DeepSpeed")
def test_zero3_keeps_each_moe_block_whole_as_a_leaf_module(tiny_model_dir, monkeypatch, caplog):
    """Under ZeRO-3 the family table's `moe_block` class (Qwen2MoeSparseMoeBlock) becomes a
    leaf module (DeepSpeed's `_z3_leaf` flag), and nothing else does; without ZeRO-3, or for
    a dense family, nothing is marked."""
    from transformers import AutoModelForCausalLM

    from tuneforge.training.zero3 import set_moe_leaf_modules

    moe = AutoModelForCausalLM.from_config(tiny_moe_config(vocab_size=300))
    dense = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert set_moe_leaf_modules(moe) == []  # ZeRO-3 off
    monkeypatch.setattr(
        "transformers.integrations.deepspeed.is_deepspeed_zero3_enabled", lambda: True
    )
    with caplog.at_level(logging.INFO, logger="tuneforge"):
        classes = set_moe_leaf_modules(moe)
        assert set_moe_leaf_modules(dense) == []
    assert [c.__name__ for c in classes] == ["Qwen2MoeSparseMoeBlock"]
    leaves = [name for name, m in moe.named_modules() if getattr(m, "_z3_leaf", False)]
    assert leaves == ["model.layers.0.mlp", "model.layers.1.mlp"]
    assert type(moe.model.layers[0].mlp).__name__ == "Qwen2MoeSparseMoeBlock"
    assert not any(getattr(m, "_z3_leaf", False) for m in dense.modules())
    assert (
        "DeepSpeed ZeRO-3: 2 Qwen2MoeSparseMoeBlock blocks are leaf modules (each gathered "
        "whole, whichever experts its tokens take)." in caplog.messages
    )


def test_retied_weights_are_saved_once_as_by_a_plain_run(tiny_model_dir, tmp_path):
    """ZeRO-2's state dict is a clone of every tensor (accelerate's get_state_dict), so the
    output layer tied to the embeddings is written a second time; `retied` shares them
    again, and only the truly tied names: equal values under other names stay apart."""
    from transformers import AutoModelForCausalLM

    from tuneforge.training.zero3 import retied

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert model.config.tie_word_embeddings
    cloned = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    model.save_pretrained(tmp_path / "cloned", state_dict=cloned)
    assert "lm_head.weight" in load_file(tmp_path / "cloned" / "model.safetensors")

    fixed = retied(model, cloned)
    assert fixed["lm_head.weight"] is fixed["model.embed_tokens.weight"]
    norms = [n for n in fixed if n.endswith("layernorm.weight")]  # all ones: equal, not tied
    assert len({id(fixed[n]) for n in norms}) == len(norms)
    model.save_pretrained(tmp_path / "retied", state_dict=fixed)
    model.save_pretrained(tmp_path / "plain")
    saved = load_file(tmp_path / "retied" / "model.safetensors")
    assert_same_weights(saved, load_file(tmp_path / "plain" / "model.safetensors"), 0, 0)


@pytest.mark.parametrize("method", ["full", "lora"])
def test_a_reward_model_saved_from_its_state_dict_writes_what_its_modules_would(
    tiny_model_dir, tmp_path, method
):
    """The files ValueHeadSaving writes from a gathered state dict (ZeRO) are those the
    modules themselves write without one: the adapter or the weights, and the value head."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from tuneforge.models.value_head import VALUE_HEAD_FILE, ModelWithValueHead, new_value_head
    from tuneforge.training.reward import save_with_value_head
    from tuneforge.training.zero3 import retied

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    if method == "lora":
        model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    wrapper = ModelWithValueHead(model, new_value_head(model))
    wrapper.save_pretrained(tmp_path / "modules")
    cloned = {name: tensor.clone() for name, tensor in wrapper.state_dict().items()}
    save_with_value_head(wrapper, retied(wrapper, cloned), str(tmp_path / "state"))
    weights = "model.safetensors" if method == "full" else "adapter_model.safetensors"
    for name in (weights, VALUE_HEAD_FILE):
        got, want = load_file(tmp_path / "state" / name), load_file(tmp_path / "modules" / name)
        assert_same_weights(got, want, 0, 0)


# ---------------------------------------------------------------------------------------------
# DeepSpeed ZeRO on two processes (and on one without a launcher), through the plain CLI


def ds_run(
    tmp_path: Path, reference: dict, stage: int, processes: int = 2, per_device: int = 1
) -> tuple[Path, str]:
    """`tuneforge train` of the reference's config under `ds_z{stage}_config.json`, with
    `per_device` examples per device: 1 x 2 x 2 devices under torchrun, or, with processes=1,
    1 x 4 in one process started without a launcher.

    A device's batch of several examples would go through the model in passes (sft without
    gradient checkpointing, Trainer.training_step), and under DeepSpeed accelerate's no_sync
    does nothing: the engine would step after each pass, not once (seen: loss 7.870 instead
    of 8.216 at step 2). Under DeepSpeed a batch is therefore one pass (per_device=2 checks it).
    """
    script = tmp_path / "ds_launch.py"
    script.write_text(DS_LAUNCH)
    keys = {**reference, "output_dir": str(tmp_path / "out")}
    keys["per_device_train_batch_size"] = per_device
    keys["gradient_accumulation_steps"] = 4 // processes // per_device
    keys["deepspeed"] = str(REPO / "examples" / "deepspeed" / f"ds_z{stage}_config.json")
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump(keys))
    if processes == 2:
        result = torchrun(script, ["train", str(config)])
    else:
        command = [sys.executable, str(script), "train", str(config)]
        result = subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    shape = f"{per_device} x {4 // processes // per_device} x {processes} devices"
    assert f"effective batch 4 ({shape})" in result.stderr
    said = f"DeepSpeed on CPU: deepspeed.comm started over gloo (world size {processes})."
    assert said in result.stderr
    return Path(keys["output_dir"]), result.stderr


def assert_trains_as_one_process(output_dir: Path, reference: dict) -> None:
    got, expected = trained_losses(output_dir), trained_losses(Path(reference["output_dir"]))
    assert len(got) == len(expected) == STEPS
    assert [loss for loss, _ in got] == pytest.approx([loss for loss, _ in expected], rel=1e-5)
    assert [norm for _, norm in got] == pytest.approx([n for _, n in expected], rel=1e-4)


@pytest.mark.slow
@pytest.mark.skipif(not (DEEPSPEED and CPU_ONLY), reason="DeepSpeed on CPU (gloo)")
@pytest.mark.parametrize(
    ("stage", "method", "processes", "fused"),
    [
        (2, "full", 2, True),
        (3, "full", 2, False),
        (3, "lora", 2, False),
        (3, "new-lora", 2, False),
        (3, "full", 1, False),
        (2, "full-2-per-device", 1, True),
    ],
    ids=[
        "zero2-full",
        "zero3-full",
        "zero3-lora",
        "zero3-new-lora",
        "zero3-full-no-launcher",
        "zero2-full-2-per-device",
    ],
)
def test_deepspeed_trains_as_one_process(tmp_path, references, stage, method, processes, fused):
    """new-lora: a new adapter starts from the same random A in both runs (the seed is set
    again before it is made: ZeRO-3's zero.Init draws from the RNG while loading), so the
    trained adapters agree too; with B = 0 the losses alone could not tell.
    full-2-per-device: two examples per device, one pass per batch (one optimizer step)."""
    per_device = 2 if method == "full-2-per-device" else 1
    method = method.removesuffix("-2-per-device")
    reference = references.keys(method)
    output_dir, stderr = ds_run(tmp_path, reference, stage, processes, per_device)
    loss_path = "output layer fused" if fused else "unfused, through the output layer's own"
    assert f"Loss: {loss_path}" in stderr  # rank 0's line; ranks > 0 log warnings only
    assert_trains_as_one_process(output_dir, reference)
    weights = "model.safetensors" if method == "full" else "adapter_model.safetensors"
    got, want = load_file(output_dir / weights), load_file(Path(reference["output_dir"]) / weights)
    # ZeRO-2's state dict clones every tensor; the tied output layer is still written once
    assert got.keys() == want.keys()
    assert_same_weights(got, want)


@pytest.mark.slow
@pytest.mark.skipif(not (DEEPSPEED and CPU_ONLY), reason="DeepSpeed on CPU (gloo)")
def test_zero3_trains_an_moe_model_with_leaf_blocks_as_one_process(tmp_path, references):
    reference = references.keys("moe")
    output_dir, stderr = ds_run(tmp_path, reference, 3)
    assert "DeepSpeed ZeRO-3: 2 Qwen2MoeSparseMoeBlock blocks are leaf modules" in stderr
    assert_trains_as_one_process(output_dir, reference)
    want = load_file(Path(reference["output_dir"]) / "model.safetensors")
    assert_same_weights(load_file(output_dir / "model.safetensors"), want)


@pytest.mark.slow
@pytest.mark.skipif(not (DEEPSPEED and CPU_ONLY), reason="DeepSpeed on CPU (gloo)")
@pytest.mark.parametrize("stage", [2, 3], ids=["zero2", "zero3"])
def test_reward_models_under_deepspeed_save_their_trained_weights(tmp_path, references, stage):
    """Under ZeRO-3 the modules hold empty placeholders at saving time, and only the state
    dict transformers gathers has the weights: the reward model's files (weights, value head)
    are written from it, and under ZeRO-2 with the tied output layer written once."""
    from transformers import AutoModelForCausalLM

    from tuneforge.models.value_head import VALUE_HEAD_FILE, load_value_head

    reference = references.keys("rm")
    output_dir, _ = ds_run(tmp_path, reference, stage)
    want_dir = Path(reference["output_dir"])
    assert_trains_as_one_process(output_dir, reference)
    got = load_file(output_dir / "model.safetensors")
    assert_same_weights(got, load_file(want_dir / "model.safetensors"), atol=1e-5)
    head = load_file(output_dir / VALUE_HEAD_FILE)
    assert_same_weights(head, load_file(want_dir / VALUE_HEAD_FILE))
    # and they load back: the language model with plain transformers, the head with ours
    model = AutoModelForCausalLM.from_pretrained(output_dir)
    embeddings = model.get_input_embeddings().weight.detach()
    torch.testing.assert_close(embeddings, got["model.embed_tokens.weight"])
    assert load_value_head(output_dir).summary.weight.abs().sum() > 0


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
