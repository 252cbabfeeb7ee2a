"""The lean SwiGLU and RMSNorm: the modules' own values and gradients, less kept for backward."""

from __future__ import annotations

import pytest
import torch

from tuneforge.models import lean_layers


def test_swiglu_and_rms_norm_pass_gradcheck():
    generator = torch.Generator().manual_seed(0)
    gate, up = (torch.randn(3, 5, generator=generator, dtype=torch.float64) for _ in range(2))
    assert torch.autograd.gradcheck(
        lean_layers.swiglu, (gate.requires_grad_(), up.requires_grad_())
    )
    hidden = torch.randn(2, 3, 6, generator=generator, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(6, generator=generator, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda h, w: lean_layers.rms_norm(h, w, 1e-6), (hidden, weight))


@pytest.mark.parametrize("bias", [False, True])
def test_swiglu_with_down_projection_passes_gradcheck(bias):
    generator = torch.Generator().manual_seed(2)
    gate, up = (torch.randn(2, 3, 5, generator=generator, dtype=torch.float64) for _ in range(2))
    weight = torch.randn(4, 5, generator=generator, dtype=torch.float64)
    bias_values = torch.randn(4, generator=generator, dtype=torch.float64) if bias else None
    inputs = [t.requires_grad_() for t in (gate, up, weight, bias_values) if t is not None]
    assert torch.autograd.gradcheck(
        lambda gate, up, weight, *rest: lean_layers.swiglu_down(gate, up, weight, *rest or [None]),
        inputs,
    )


def test_swiglu_with_down_projection_skips_gradients_not_needed():
    gate, up = torch.randn(3, 5, requires_grad=True), torch.randn(3, 5, requires_grad=True)
    down = torch.nn.Linear(5, 4).requires_grad_(False)  # a frozen projection, as in freeze tuning
    expected = down(torch.nn.functional.silu(gate) * up)
    output = lean_layers.swiglu_down(gate, up, down.weight, down.bias)
    torch.testing.assert_close(output, expected)
    output.sum().backward()
    assert down.weight.grad is None and gate.grad is not None and up.grad is not None


@pytest.fixture
def model(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir).train()


def loss_and_gradients(model, ids):
    model.zero_grad()
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def saved_bytes(model, ids) -> int:
    """Bytes of distinct non-parameter tensors autograd keeps for backward."""
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameters:
            seen[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(input_ids=ids, labels=ids)
    return sum(seen.values())


def test_lean_model_trains_exactly_like_the_original_and_keeps_less(model):
    ids = torch.randint(10, 4000, (2, 24), generator=torch.Generator().manual_seed(1))
    loss, gradients = loss_and_gradients(model, ids)
    before = saved_bytes(model, ids)

    layers = model.config.num_hidden_layers
    assert lean_layers.apply_lean_layers(model) == layers * 3 + 1  # MLP and 2 norms, final norm
    lean_loss, lean_gradients = loss_and_gradients(model, ids)
    after = saved_bytes(model, ids)

    torch.testing.assert_close(lean_loss, loss)
    for name, gradient in gradients.items():
        torch.testing.assert_close(lean_gradients[name], gradient, rtol=1e-4, atol=1e-6, msg=name)
    tokens, intermediate = ids.numel(), model.config.intermediate_size
    # at least silu(gate) and its product with up (down_proj's input) per layer, float32
    assert before - after >= 2 * layers * tokens * intermediate * 4


def test_unknown_blocks_are_left_alone():
    class GemmaStyleNorm(torch.nn.Module):  # (1 + weight) scaling: not the formula here
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(4))

        def forward(self, x):
            return x * (1 + self.weight)

    module = torch.nn.Sequential(GemmaStyleNorm(), torch.nn.Linear(4, 4))
    assert lean_layers.apply_lean_layers(module) == 0
