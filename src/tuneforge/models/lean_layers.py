"""Memory-lean backward for two blocks of Llama-family decoders: SwiGLU and RMSNorm.

Autograd keeps what each op needs for backward: `silu(gate) * up` keeps gate, silu(gate) and
up, and a trained `down_proj` then keeps their product as its input; an RMSNorm with a
trained weight keeps its input and its normalised output. The functions here keep only their
inputs (and the norm's per-token scale) and recompute the rest in backward, a few elementwise
ops: 11 KB per token per layer less for the MLP of the reference benchmark model
(intermediate 1408, float32, down_proj trained) and 2 KB per norm when norms are trained.
Same values, same gradients (tested against the modules' own forward).

Applied to module instances of known classes only, whose forward is exactly these formulas,
and only for training without Liger (which replaces the same blocks with its own kernels).
"""

from __future__ import annotations

import types
from typing import Any

import torch
import torch.nn.functional as F

SWIGLU_MLPS = {"LlamaMLP", "MistralMLP", "Qwen2MLP", "Qwen3MLP"}
HOOK_KINDS = ("forward", "forward_pre", "backward", "backward_pre")
RMS_NORMS = {"LlamaRMSNorm", "MistralRMSNorm", "Qwen2RMSNorm", "Qwen3RMSNorm"}


class _SwiGLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gate, up):
        ctx.save_for_backward(gate, up)
        return F.silu(gate) * up

    @staticmethod
    def backward(ctx, grad):
        gate, up = ctx.saved_tensors
        sigmoid = torch.sigmoid(gate)
        return _swiglu_gradients(grad, up, sigmoid, gate * sigmoid)


def _swiglu_gradients(grad, up, sigmoid, silu):
    """Gradients (of gate, of up) of `silu(gate) * up` given `grad`, sigmoid(gate) and
    silu(gate). Built in silu's storage (overwritten): intermediate-sized temporaries are the
    largest of a backward pass."""
    grad_up = grad * silu
    # d silu / d gate = sigmoid * (1 + gate * (1 - sigmoid)) = sigmoid + silu * (1 - sigmoid)
    derivative = silu.mul_(torch.sub(1, sigmoid)).add_(sigmoid)
    return derivative.mul_(up).mul_(grad), grad_up


class _SwiGLUDown(torch.autograd.Function):
    """`linear(silu(gate) * up, weight, bias)`, keeping gate and up only: the product, which
    the weight's gradient needs, is recomputed in backward."""

    @staticmethod
    def forward(ctx, gate, up, weight, bias):
        ctx.save_for_backward(gate, up, weight)
        ctx.has_bias = bias is not None
        return F.linear(F.silu(gate) * up, weight, bias)

    @staticmethod
    def backward(ctx, grad):
        gate, up, weight = ctx.saved_tensors
        sigmoid = torch.sigmoid(gate)
        silu = gate * sigmoid
        flat_grad = grad.reshape(-1, grad.shape[-1])
        grad_weight = grad_bias = None
        if ctx.needs_input_grad[2]:
            grad_weight = flat_grad.T @ (silu * up).reshape(-1, up.shape[-1])
        if ctx.has_bias and ctx.needs_input_grad[3]:
            grad_bias = flat_grad.sum(0)
        grad_gate, grad_up = _swiglu_gradients(grad @ weight, up, sigmoid, silu)
        return grad_gate, grad_up, grad_weight, grad_bias


def _wide(tensor: torch.Tensor) -> torch.dtype:
    """float32 for half-precision inputs, as the modules compute their norms."""
    return torch.promote_types(tensor.dtype, torch.float32)


class _RMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, eps):
        wide = hidden.to(_wide(hidden))
        scale = torch.rsqrt(wide.pow(2).mean(-1, keepdim=True) + eps)
        ctx.save_for_backward(hidden, weight, scale)
        return weight * (wide * scale).to(hidden.dtype)

    @staticmethod
    def backward(ctx, grad):
        hidden, weight, scale = ctx.saved_tensors
        normalised = hidden.to(_wide(hidden)) * scale
        grad_weight = None
        if ctx.needs_input_grad[1]:
            product = grad * normalised.to(hidden.dtype)
            grad_weight = product.reshape(-1, product.shape[-1]).sum(0).to(weight.dtype)
        grad_normalised = (grad * weight).to(normalised.dtype)
        # d/dx of x * rsqrt(mean(x^2)): scale * (g - n * mean(g * n))
        mean = (grad_normalised * normalised).mean(-1, keepdim=True)
        grad_hidden = scale * (grad_normalised - normalised * mean)
        return grad_hidden.to(hidden.dtype), grad_weight, None


def swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return _SwiGLU.apply(gate, up)


def rms_norm(hidden: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return _RMSNorm.apply(hidden, weight, eps)


def swiglu_down(
    gate: torch.Tensor, up: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """`linear(silu(gate) * up, weight, bias)`, the down projection of a SwiGLU MLP."""
    return _SwiGLUDown.apply(gate, up, weight, bias)


def _plain_linear(module: Any, x: torch.Tensor) -> bool:
    """A bare nn.Linear (not LoRA-wrapped, no hooks) in the input's dtype outside autocast:
    its forward is exactly `linear(x, weight, bias)` and the fused backward's dtypes match."""
    return (
        type(module) is torch.nn.Linear
        and not any(getattr(module, f"_{kind}_hooks") for kind in HOOK_KINDS)
        and module.weight.dtype == x.dtype
        and not torch.is_autocast_enabled(x.device.type)
    )


def _lean_mlp_forward(self: Any, x: torch.Tensor) -> torch.Tensor:
    gate, up = self.gate_proj(x), self.up_proj(x)
    if _plain_linear(self.down_proj, gate):
        return swiglu_down(gate, up, self.down_proj.weight, self.down_proj.bias)
    return self.down_proj(swiglu(gate, up))


def _lean_norm_forward(self: Any, hidden: torch.Tensor) -> torch.Tensor:
    return rms_norm(hidden, self.weight, self.variance_epsilon)


def apply_lean_layers(model: torch.nn.Module) -> int:
    """Gives the known SwiGLU MLPs and RMSNorms of `model` the lean forward; returns how many
    modules changed."""
    changed = 0
    for module in model.modules():
        name = type(module).__name__
        if name in SWIGLU_MLPS and type(module.act_fn).__name__ in ("SiLUActivation", "SiLU"):
            module.forward = types.MethodType(_lean_mlp_forward, module)
        elif name in RMS_NORMS:
            module.forward = types.MethodType(_lean_norm_forward, module)
        else:
            continue
        changed += 1
    return changed
