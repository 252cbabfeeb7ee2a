"""The fused output-layer loss: same value and same gradients as logits + cross-entropy, for
full and LoRA models, and the unfused path wherever the fusion would be wrong."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tuneforge.data.batch import PaddingFreeBatch
from tuneforge.data.encode import IGNORE_INDEX
from tuneforge.training import linear_cross_entropy as fused
from tuneforge.training.collate import PaddingFreeCollator
from tuneforge.training.loss import language_model_loss, token_losses


def batch(seed: int = 0) -> PaddingFreeBatch:
    generator = torch.Generator().manual_seed(seed)
    features = []
    for length in (9, 23, 14, 5):
        ids = torch.randint(10, 4000, (length,), generator=generator).tolist()
        features.append(
            {"input_ids": ids, "labels": [IGNORE_INDEX] * (length // 3) + ids[length // 3 :]}
        )
    return PaddingFreeCollator()(features)


def unfused_loss(model, inputs, denominator):
    losses, _ = token_losses(model, inputs)
    return losses.sum() / denominator


def gradients(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("smoothing", [0.0, 0.3])  # transformers' label_smoothing_factor
@pytest.mark.parametrize("rows", [3, 10_000])  # many chunks, and one
@pytest.mark.parametrize("with_bias", [False, True])
def test_value_and_gradients_equal_logits_then_cross_entropy(
    monkeypatch, rows, with_bias, smoothing
):
    monkeypatch.setattr(fused, "CHUNK_ELEMENTS", 1)
    monkeypatch.setattr(fused, "MIN_CHUNK_ROWS", rows)
    generator = torch.Generator().manual_seed(1)
    hidden = torch.randn(17, 8, generator=generator, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(50, 8, generator=generator, dtype=torch.float64, requires_grad=True)
    bias = (
        torch.randn(50, generator=generator, dtype=torch.float64, requires_grad=True)
        if with_bias
        else None
    )
    targets = torch.randint(0, 50, (17,), generator=generator)
    scale = 1 / 40

    logits = F.linear(hidden, weight, bias)
    expected = F.cross_entropy(logits, targets, reduction="sum", label_smoothing=smoothing) * scale
    wanted = torch.autograd.grad(expected * 3, [t for t in (hidden, weight, bias) if t is not None])
    loss = fused.linear_cross_entropy(hidden, weight, bias, targets, scale, smoothing)
    got = torch.autograd.grad(loss * 3, [t for t in (hidden, weight, bias) if t is not None])

    torch.testing.assert_close(loss, expected.float())
    for a, b in zip(got, wanted):
        torch.testing.assert_close(a, b)


def test_frozen_output_weight_gets_no_gradient_and_costs_no_buffer():
    hidden = torch.randn(6, 4, requires_grad=True)
    weight = torch.randn(11, 4)
    loss = fused.linear_cross_entropy(hidden, weight, None, torch.arange(6), 1.0)
    loss.backward()
    assert hidden.grad is not None and weight.grad is None
    expected = F.cross_entropy(hidden @ weight.T, torch.arange(6), reduction="sum")
    torch.testing.assert_close(loss, expected)


@pytest.fixture
def model(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa").train()


def test_full_model_loss_and_every_gradient_match(model):
    inputs = batch()
    expected = unfused_loss(model, inputs, 50)
    expected.backward()
    wanted = gradients(model)
    model.zero_grad()

    loss, trained = language_model_loss(model, inputs, 50)
    loss.backward()
    got = gradients(model)

    assert fused.fused_output_layer(model, inputs.model_inputs(), torch.arange(3)) is model.lm_head
    assert trained == int((inputs.targets != IGNORE_INDEX).sum())
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    assert got.keys() == wanted.keys()
    assert {"lm_head.weight", "model.embed_tokens.weight"} & got.keys()  # the output weight trained
    for name in wanted:
        torch.testing.assert_close(got[name], wanted[name], rtol=1e-4, atol=1e-6, msg=name)


def test_lora_model_loss_and_adapter_gradients_match(model):
    from peft import LoraConfig, get_peft_model

    lora = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", lora_dropout=0.0))
    for name, param in lora.named_parameters():
        if "lora_B" in name:  # non-zero B, so every adapter gets a gradient
            torch.nn.init.normal_(param, std=0.02)
    inputs = batch(3)
    unfused_loss(lora, inputs, 31).backward()
    wanted = gradients(lora)
    lora.zero_grad()
    loss, _ = language_model_loss(lora, inputs, 31)
    loss.backward()
    got = gradients(lora)
    assert got.keys() == wanted.keys() and any("lora_A" in name for name in got)
    for name in wanted:
        torch.testing.assert_close(got[name], wanted[name], rtol=1e-4, atol=1e-6, msg=name)


def test_models_whose_logits_are_transformed_keep_the_unfused_path(model):
    """A soft-capped or scaled output (Gemma-2 style) makes logits != output_layer(hidden): the
    check must see it and the loss must still be the true one."""
    original = type(model).forward

    def capped_forward(self, *args, **kwargs):
        output = original(self, *args, **kwargs)
        output.logits = torch.tanh(output.logits / 5.0) * 5.0
        return output

    capped = type("CappedForCausalLM", (type(model),), {"forward": capped_forward})
    model.__class__ = capped
    inputs = batch(5)
    assert fused.fused_output_layer(model, inputs.model_inputs(), torch.arange(4)) is None
    loss, _ = language_model_loss(model, inputs, 20)
    torch.testing.assert_close(loss, unfused_loss(model, inputs, 20))


def test_a_lora_wrapped_output_layer_is_not_fused(model):
    from peft import LoraConfig, get_peft_model

    lora = get_peft_model(model, LoraConfig(r=4, target_modules=["lm_head", "q_proj"]))
    assert fused.fused_output_layer(lora, batch().model_inputs(), torch.arange(4)) is None


def test_no_gradient_no_fusion(model):
    inputs = batch(2)
    with torch.no_grad():
        loss, _ = language_model_loss(model, inputs, 12)
    torch.testing.assert_close(loss, unfused_loss(model, inputs, 12))


def test_label_smoothing_is_transformers_label_smoother(tiny_model_dir):
    """`label_smoothing_factor` as transformers' Trainer applies it (LabelSmoother on the
    shifted logits), fused in training and unfused in evaluation."""
    from transformers import AutoModelForCausalLM
    from transformers.trainer_pt_utils import LabelSmoother

    from tuneforge.training.loss import language_model_loss_terms

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).float()
    inputs = batch()
    outputs = model(**inputs.model_inputs(), use_cache=False)  # a cache hides the packing
    keep = inputs.trained_positions()
    # LabelSmoother shifts itself (logits[:-1] against labels[1:]): the kept positions' logits
    # and their targets, one dummy position at each end
    logits = outputs.logits[0, keep][None]
    logits = torch.cat([logits, logits[:, :1]], dim=1)
    targets = torch.cat([torch.tensor([IGNORE_INDEX]), inputs.targets[0, keep]])[None]
    wanted = LabelSmoother(epsilon=0.4)({"logits": logits}, targets, shift_labels=True)
    for grad in (True, False):
        with torch.set_grad_enabled(grad):
            got = language_model_loss_terms(model, inputs, label_smoothing=0.4).loss
        torch.testing.assert_close(got, wanted, rtol=1e-5, atol=1e-6)
    plain = language_model_loss_terms(model, inputs).loss
    assert abs(plain.item() - wanted.item()) > 20 * 1e-5 * wanted.item()  # it matters
