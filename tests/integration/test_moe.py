"""Mixture-of-experts models train with their router load-balancing loss, as in
LLaMA-Factory: the loader turns router logits on for training (`moe_aux_loss_coef`), the loss
adds `coefficient * aux_loss` over every token of the padding-free row, the coefficient
reaches the router's gradient, and the training logs carry `aux_loss`."""

from __future__ import annotations

import importlib
import json
import logging

import pytest
import torch
import torch.nn.functional as F

from conftest import training_config
from tuneforge.data.encode import IGNORE_INDEX
from tuneforge.models.attention import register_varlen_attention
from tuneforge.models.loader import configure_router_loss
from tuneforge.stages import run_stage
from tuneforge.training.collate import PaddingFreeCollator
from tuneforge.training.loss import language_model_loss, router_loss_coefficient

VOCAB = 300
COMMON = {
    "vocab_size": VOCAB,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 64,
    "num_experts_per_tok": 2,
}
# each family's config class and how it names its 4 experts; Phi-MoE without its jitter
FAMILIES = {
    "qwen2_moe": (
        "Qwen2MoeConfig",
        {"num_experts": 4, "moe_intermediate_size": 32, "shared_expert_intermediate_size": 32},
    ),
    "mixtral": ("MixtralConfig", {"num_local_experts": 4}),
    "qwen3_moe": ("Qwen3MoeConfig", {"num_experts": 4, "moe_intermediate_size": 32}),
    "olmoe": ("OlmoeConfig", {"num_experts": 4}),
    "phimoe": (
        "PhimoeConfig",
        {"num_local_experts": 4, "router_jitter_noise": 0.0, "input_jitter_noise": 0.0},
    ),
}


def moe_config(family: str, **keys):
    import transformers

    name, extra = FAMILIES[family]
    return getattr(transformers, name)(**{**COMMON, **extra, **keys})


def tiny_moe(family: str, coefficient: float | None, output_router_logits: bool = True):
    from transformers import AutoModelForCausalLM

    config = moe_config(family, output_router_logits=output_router_logits)
    configure_router_loss(config, coefficient, training=True)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(
        config, attn_implementation=register_varlen_attention()
    )
    return model.train()


def batch(seed: int = 0):
    """Four examples back to back in one row, prompts untrained."""
    generator = torch.Generator().manual_seed(seed)
    features = []
    for length in (9, 23, 14, 6):
        ids = torch.randint(0, VOCAB, (length,), generator=generator).tolist()
        features.append(
            {"input_ids": ids, "labels": [IGNORE_INDEX] * (length // 3) + ids[length // 3 :]}
        )
    return PaddingFreeCollator()(features)


def experts(model) -> tuple[int, int]:
    config = model.config
    count = getattr(config, "num_experts", None) or config.num_local_experts
    return count, config.num_experts_per_tok


def reference(model, inputs, family: str):
    """The summed token cross-entropy, transformers' own load_balancing_loss_func of the same
    forward's router logits (no mask: a padding-free row has no padding), the trained count."""
    modeling = importlib.import_module(f"transformers.models.{family}.modeling_{family}")
    keep = inputs.trained_positions()
    outputs = model(**inputs.model_inputs(), logits_to_keep=keep, use_cache=False)
    tokens = F.cross_entropy(outputs.logits[0].float(), inputs.targets[0, keep], reduction="sum")
    router = modeling.load_balancing_loss_func(outputs.router_logits, *experts(model), None)
    return tokens, router, keep.numel()


def router_gradients(model) -> dict[str, torch.Tensor]:
    return {
        name: param.grad.clone()
        for name, param in model.named_parameters()
        if name.endswith(("mlp.gate.weight", "mlp.router.weight"))
    }


def all_gradients(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("fused", [True, False])
def test_loss_is_token_loss_plus_coefficient_times_load_balancing_loss(family, fused):
    coefficient = 0.5
    model = tiny_moe(family, coefficient)
    inputs = batch()
    assert router_loss_coefficient(model) == coefficient
    tokens, router, trained = reference(model, inputs, family)
    assert router.item() > 0
    with torch.set_grad_enabled(fused):  # no grad: the unfused path (evaluation)
        own, counted = language_model_loss(model, inputs)
        # accumulated: the router loss weighs this batch's share of the step's trained tokens
        accumulated, _ = language_model_loss(model, inputs, 2 * trained)
    assert counted == trained
    torch.testing.assert_close(own, tokens / trained + coefficient * router, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(
        accumulated, (tokens + coefficient * router * trained) / (2 * trained), rtol=1e-5, atol=1e-6
    )


def test_evaluation_loss_carries_the_router_loss_as_training_does():
    """transformers' MoE models add `coefficient * aux_loss` to any loss they compute, in eval
    mode too (LLaMA-Factory's eval_loss); the evaluation reports the router loss as well."""
    from types import SimpleNamespace

    from tuneforge.training.trainer import Trainer

    model = tiny_moe("qwen2_moe", 0.5).eval()
    inputs = batch()
    tokens, router, trained = reference(model, inputs, "qwen2_moe")
    args = SimpleNamespace(label_smoothing_factor=0.0)
    owner = SimpleNamespace(metric_names=("accuracy", "aux_loss"), args=args)
    with torch.no_grad():
        loss, metrics = Trainer.evaluation_loss_and_metrics(owner, model, inputs)
    torch.testing.assert_close(loss, tokens / trained + 0.5 * router, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(metrics["aux_loss"], router, rtol=1e-5, atol=1e-6)
    assert metrics["accuracy"].shape == (trained,)


def test_a_lora_model_gets_the_router_loss_through_its_wrapper():
    from peft import LoraConfig, get_peft_model

    lora = get_peft_model(
        tiny_moe("qwen2_moe", 0.5), LoraConfig(r=4, target_modules=["q_proj", "v_proj"])
    )
    inputs = batch(5)
    assert router_loss_coefficient(lora) == 0.5
    tokens, router, trained = reference(lora, inputs, "qwen2_moe")
    loss, _ = language_model_loss(lora, inputs)
    torch.testing.assert_close(loss, tokens / trained + 0.5 * router, rtol=1e-5, atol=1e-6)
    loss.backward()  # the router loss reaches the adapters through the hidden states
    assert all(p.grad is not None for n, p in lora.named_parameters() if "lora_" in n)


def test_router_loss_over_the_packed_row_equals_that_of_a_padded_batch():
    """LLaMA-Factory pads the same examples and masks the padding out of the router loss:
    the packed row, which has no padding, gives the same value without a mask."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(
        moe_config("qwen2_moe", output_router_logits=True), attn_implementation="sdpa"
    ).eval()
    inputs = batch(1)
    lengths = inputs.sequence_lengths().tolist()
    rows = torch.zeros(len(lengths), max(lengths), dtype=torch.long)
    mask = torch.zeros_like(rows)
    for row, (start, length) in enumerate(zip(inputs.cu_seq_lens[:-1].tolist(), lengths)):
        rows[row, :length] = inputs.input_ids[0, start : start + length]
        mask[row, :length] = 1
    with torch.no_grad():
        padded = model(input_ids=rows, attention_mask=mask, use_cache=False).aux_loss
        packed = tiny_moe("qwen2_moe", 1.0)(**inputs.model_inputs(), use_cache=False).aux_loss
    torch.testing.assert_close(packed, padded, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("family", ["qwen2_moe", "mixtral"])
def test_the_coefficient_reaches_the_router_gradient(family):
    inputs = batch(2)
    gradients = {}
    for coefficient in (0.0, 1.0):
        # the router logits on: a coefficient of 0 must still add nothing
        model = tiny_moe(family, None)
        model.config.router_aux_loss_coef = model.router_aux_loss_coef = coefficient
        loss, _ = language_model_loss(model, inputs, 40)
        loss.backward()
        gradients[coefficient] = (loss.detach(), all_gradients(model), router_gradients(model))
    dense = tiny_moe(family, 0.0)  # moe_aux_loss_coef: 0 turns the router logits off
    assert dense.config.output_router_logits is False
    loss, _ = language_model_loss(dense, inputs, 40)
    loss.backward()

    zero_loss, zero_all, zero_router = gradients[0.0]
    assert torch.equal(zero_loss, loss.detach())
    assert zero_all.keys() == all_gradients(dense).keys()
    for name, grad in all_gradients(dense).items():
        assert torch.equal(zero_all[name], grad), name
    one_router = gradients[1.0][2]
    assert zero_router.keys() == one_router.keys() and len(zero_router) == 2
    for name in zero_router:
        assert not torch.allclose(zero_router[name], one_router[name]), name


def test_gradient_checkpointing_keeps_the_router_loss_and_its_gradient():
    inputs = batch(3)
    model = tiny_moe("qwen2_moe", 1.0)
    plain, _ = language_model_loss(model, inputs)
    plain.backward()
    wanted = router_gradients(model)
    model.zero_grad()
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    checkpointed, _ = language_model_loss(model, inputs)
    checkpointed.backward()
    torch.testing.assert_close(checkpointed, plain)
    for name, grad in router_gradients(model).items():
        torch.testing.assert_close(grad, wanted[name], msg=name)


def test_the_loader_sets_each_family_s_coefficient_and_logs_it_once(caplog):
    from transformers import DbrxConfig, DeepseekV3Config, JetMoeConfig

    with caplog.at_level(logging.INFO, logger="tuneforge"):
        config = moe_config("olmoe")
        configure_router_loss(config, 0.25, training=True)
    assert (config.output_router_logits, config.router_aux_loss_coef) == (True, 0.25)
    assert [r.getMessage() for r in caplog.records] == [
        "MoE router load-balancing loss on: router_aux_loss_coef = 0.25."
    ]

    unset = moe_config("mixtral")  # unset: the checkpoint's config decides (LLaMA-Factory)
    configure_router_loss(unset, None, training=True)
    assert (unset.output_router_logits, unset.router_aux_loss_coef) == (False, 0.001)
    inference = moe_config("mixtral", output_router_logits=True)
    configure_router_loss(inference, 0.5, training=False)
    assert inference.output_router_logits is False and inference.router_aux_loss_coef == 0.001

    jetmoe = JetMoeConfig()
    configure_router_loss(jetmoe, 0.3, training=True)
    assert (jetmoe.output_router_logits, jetmoe.aux_loss_coef) == (True, 0.3)
    dbrx = DbrxConfig()
    configure_router_loss(dbrx, 0.2, training=True)
    assert (dbrx.output_router_logits, dbrx.ffn_config.moe_loss_weight) == (True, 0.2)
    deepseek = DeepseekV3Config()  # aux-loss-free balancing: nothing to turn on
    configure_router_loss(deepseek, 0.2, training=True)
    assert deepseek.output_router_logits is False


def save_tiny_moe(folder, family: str) -> None:
    from transformers import AutoModelForCausalLM

    from tuneforge.models.tiny import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer("qwen2", 1024)
    config = moe_config(
        family,
        vocab_size=len(tokenizer),
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def test_the_loader_checkpoints_an_moe_model_without_reentrant_checkpoints(tmp_path):
    """A reentrant checkpoint runs its forward without grad, so the router logits recorded
    inside it would carry no gradient: with the router loss on, the loader does not use one."""
    from transformers import AutoTokenizer

    from tuneforge.models.loader import load_model
    from tuneforge.training.arguments import effective_training_arguments

    save_tiny_moe(tmp_path / "model", "qwen2_moe")
    config = training_config(
        tmp_path / "model",
        tmp_path / "out",
        finetuning_type="full",
        moe_aux_loss_coef=1.0,
        gradient_checkpointing=True,
        use_reentrant_gc=True,
    )
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "model")
    training = effective_training_arguments(config)
    model = load_model(config.model, tokenizer, (), training=training, cutoff_len=128).train()
    assert model.is_activation_checkpointing and model.config.output_router_logits is True
    outputs = model(**batch(4).model_inputs(), use_cache=False)
    assert outputs.aux_loss.requires_grad
    inference = load_model(config.model, tokenizer, ())
    assert inference.config.output_router_logits is False


@pytest.mark.slow
@pytest.mark.parametrize("family", ["qwen2_moe", "mixtral"])
def test_training_logs_the_router_loss(tmp_path, family):
    model_dir = tmp_path / "model"
    save_tiny_moe(model_dir, family)
    logs = {}
    for name, keys in {"with": {"moe_aux_loss_coef": 0.01}, "unset": {}}.items():
        out = tmp_path / name
        config = training_config(
            model_dir,
            out,
            finetuning_type="full",
            max_steps=4,
            learning_rate=1e-3,
            gradient_accumulation_steps=2,
            disable_gradient_checkpointing=True,
            **keys,
        )
        assert run_stage(config) == 0
        lines = [json.loads(line) for line in (out / "trainer_log.jsonl").read_text().splitlines()]
        logs[name] = [line for line in lines if "loss" in line]
    assert len(logs["with"]) == 4
    for line in logs["with"]:
        # top_k (2) for balanced routing, up to the expert count (4) for a collapsed one
        assert 1.5 < line["aux_loss"] <= 4.0
    assert not any("aux_loss" in line for line in logs["unset"])
    # the same first step without the router loss: the logged loss differs by coef * aux_loss
    # once per optimizer step, not once per accumulated micro-batch
    first, plain = logs["with"][0], logs["unset"][0]
    assert first["loss"] - plain["loss"] == pytest.approx(0.01 * first["aux_loss"], abs=2e-3)
    saved = json.loads((tmp_path / "with" / "config.json").read_text())
    assert saved["router_aux_loss_coef"] == 0.01


@pytest.mark.parametrize("family", ["jamba", "qwen3_next", "granitemoehybrid", "minimax"])
def test_the_padded_path_gives_the_router_loss_of_a_padded_batch(family):
    """Hybrid MoE models take the padded path: their router logits come back un-padded, so
    the router loss covers the real tokens, as transformers' own loss on the padded batch
    with its mask does (labels given, it adds `coefficient * aux_loss` itself)."""
    import copy

    from family_configs import tiny_config
    from transformers import AutoModelForCausalLM

    from tuneforge.models.padded_forward import enable_padded_forward

    config = tiny_config(family)
    configure_router_loss(config, 0.5, training=True)
    torch.manual_seed(0)
    eager = AutoModelForCausalLM.from_config(copy.deepcopy(config), attn_implementation="eager")
    padded = AutoModelForCausalLM.from_config(copy.deepcopy(config))
    padded.load_state_dict(eager.state_dict())
    enable_padded_forward(padded)
    generator = torch.Generator().manual_seed(3)
    sequences = [torch.randint(3, 96, (n,), generator=generator) for n in (11, 5, 8)]
    longest = max(len(s) for s in sequences)
    ids = torch.zeros(len(sequences), longest, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, sequence in enumerate(sequences):
        ids[row, : len(sequence)] = sequence
        mask[row, : len(sequence)] = 1
    labels = ids.masked_fill(mask == 0, IGNORE_INDEX)
    expected = eager(input_ids=ids, attention_mask=mask, labels=labels)
    assert expected.aux_loss > 0
    row = PaddingFreeCollator()([{"input_ids": s.tolist()} for s in sequences])
    loss, _ = language_model_loss(padded, row)
    torch.testing.assert_close(loss, expected.loss, rtol=1e-5, atol=1e-6)
