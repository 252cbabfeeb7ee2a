"""Cross-entropy through the output layer without ever holding the logits of a whole batch.

The logits of the trained positions are the largest activation of a training step: the
vocabulary (8k to 260k) times every trained token, in float32, and cross-entropy keeps two or
three tensors of that size for backward. Here the vocabulary projection, the loss and its
gradients are computed together, a chunk of tokens at a time: the forward pass already knows
the gradient of a summed loss (softmax minus one-hot, times the scale), so it stores the
gradients of the hidden states and of the output weight instead of the logits, and backward
only multiplies them by the incoming scalar. Same FLOPs as the unfused path, one chunk of
logits in memory. This is the CPU-and-GPU equivalent of Liger's fused linear cross-entropy.

Models are used through their ordinary forward (so DDP, checkpointing and PEFT behave as
usual): a pre-hook on the output layer takes the hidden states it is given and hands it an
empty slice instead. Whether a model's logits really are `output_layer(hidden)` (no
soft-capping or scaling after it) is checked once per model on real inputs.

The fused loss reads the output weight outside the layer's forward and writes its gradient
itself, so it needs a weight that is whole there and a plain autograd leaf. DeepSpeed ZeRO-3
(a 0-element placeholder except inside the layer's forward, gradients reduce-scattered through
its hooks) and FSDP (a flat or DTensor shard) break both, and take the unfused path.
"""

from __future__ import annotations

import contextlib
import logging
import weakref
from typing import Any

import torch
import torch.nn.functional as F

CHUNK_ELEMENTS = 1 << 21  # logits per chunk: 8 MB in float32, one buffer reused by every chunk
MIN_CHUNK_ROWS = 64

_checked: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

logger = logging.getLogger("tuneforge")


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, scale, smoothing):
        needs_hidden, needs_weight, needs_bias = ctx.needs_input_grad[:3]
        with_grads = needs_hidden or needs_weight or needs_bias
        compute_weight = weight.to(hidden.dtype)
        compute_bias = None if bias is None else bias.to(hidden.dtype)
        grad_hidden = torch.empty_like(hidden) if needs_hidden else None
        grad_weight = weight.new_zeros(weight.shape, dtype=torch.float32) if needs_weight else None
        grad_bias = weight.new_zeros(weight.shape[0], dtype=torch.float32) if needs_bias else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        rows = min(hidden.shape[0], max(MIN_CHUNK_ROWS, CHUNK_ELEMENTS // weight.shape[0]))
        buffer = hidden.new_empty((rows, weight.shape[0]), dtype=torch.float32)
        for start in range(0, hidden.shape[0], rows):
            chunk, chunk_targets = hidden[start : start + rows], targets[start : start + rows]
            logits = _logits_into(buffer[: len(chunk)], chunk, compute_weight, compute_bias)
            picked = logits.gather(1, chunk_targets[:, None]).squeeze(1)
            if smoothing:  # the target is (1 - smoothing) one-hot plus smoothing spread evenly
                picked = (1 - smoothing) * picked + smoothing * logits.mean(dim=-1)
            # log-sum-exp in place: exp(logits - max) overwrites the logits and is reused below
            peak = logits.amax(dim=-1, keepdim=True)
            exp = logits.sub_(peak).exp_()
            sums = exp.sum(dim=-1, keepdim=True)
            total += (peak.squeeze(1) + sums.squeeze(1).log() - picked).sum()
            if not with_grads:
                continue
            # d(scale * sum of losses)/d(logits) = scale * (softmax - target distribution)
            probs = exp.mul_(scale / sums)
            if smoothing:
                probs.sub_(scale * smoothing / weight.shape[0])
            rows_of_chunk = torch.arange(len(chunk_targets), device=probs.device)
            probs[rows_of_chunk, chunk_targets] -= scale * (1 - smoothing)
            if grad_hidden is not None:
                grad_hidden[start : start + rows] = probs.to(hidden.dtype) @ compute_weight
            if grad_weight is not None:
                grad_weight.addmm_(probs.T, chunk.float())
            if grad_bias is not None:
                grad_bias += probs.sum(0)
        ctx.grads = (grad_hidden, grad_weight, grad_bias)
        ctx.dtypes = (weight.dtype, None if bias is None else bias.dtype)
        return total * scale

    @staticmethod
    def backward(ctx, grad_output):
        grad_hidden, grad_weight, grad_bias = ctx.grads
        ctx.grads = None
        weight_dtype, bias_dtype = ctx.dtypes
        if grad_hidden is not None:
            grad_hidden = grad_hidden * grad_output.to(grad_hidden.dtype)
        if grad_weight is not None:
            grad_weight = grad_weight.mul_(grad_output).to(weight_dtype)
        if grad_bias is not None:
            grad_bias = grad_bias.mul_(grad_output).to(bias_dtype)
        return grad_hidden, grad_weight, grad_bias, None, None, None


def _logits_into(out, chunk, weight, bias):
    """`chunk @ weight.T + bias` as float32 in `out` (written in place when already float32)."""
    if chunk.dtype != torch.float32:
        return out.copy_(F.linear(chunk, weight, bias))
    if bias is None:
        return torch.mm(chunk, weight.T, out=out)
    return torch.addmm(bias, chunk, weight.T, out=out)


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    scale: float | torch.Tensor = 1.0,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """`scale * sum(cross_entropy(hidden @ weight.T + bias, targets, label_smoothing=...))`,
    in float32, for hidden [tokens, hidden_size], weight [vocab, hidden_size] and targets
    [tokens]."""
    if torch.is_tensor(scale):
        scale = scale.to(device=hidden.device, dtype=torch.float32)
    return _LinearCrossEntropy.apply(hidden, weight, bias, targets, scale, label_smoothing)


@contextlib.contextmanager
def output_layer_inputs(model: Any, skip_projection: bool = True):
    """Collects the hidden states that reach the model's output layer during a forward pass
    (in `captured`); with `skip_projection` the layer is handed an empty slice instead, so it
    computes no logits."""
    captured: list[torch.Tensor] = []

    def take(module, args):
        captured.append(args[0])
        return (args[0][..., :0, :], *args[1:]) if skip_projection else None

    handle = _unwrapped(model).get_output_embeddings().register_forward_pre_hook(take)
    try:
        yield captured
    finally:
        handle.remove()


def fused_output_layer(model: Any, inputs: dict[str, Any], keep: torch.Tensor):
    """The model's output layer when the fused loss computes exactly its logits, else None.

    The check runs once per model: the output weight must be whole outside the layer's
    forward (not sharded by ZeRO-3 or FSDP), and the logits of a few trained positions of this
    batch, through the model's own forward, must equal `output_layer(hidden)` of that forward.
    """
    unwrapped = _unwrapped(model)
    head = _output_layer(unwrapped)
    if head is None or keep.numel() == 0:
        return None
    if unwrapped not in _checked:
        sharded = sharded_weight(model, head.weight)
        _checked[unwrapped] = sharded is None and _projection_is_plain(
            model, head, inputs, keep[:8]
        )
        if _checked[unwrapped]:
            logger.info("Loss: output layer fused with cross-entropy (no logits kept).")
        else:
            reason = sharded or "the logits are not output_layer(hidden)"
            logger.info("Loss: unfused, through the output layer's own forward (%s).", reason)
    return head if _checked[unwrapped] else None


def sharded_weight(model: Any, weight: torch.Tensor) -> str | None:
    """Who shards `weight` of `model` (DeepSpeed ZeRO-3 or FSDP), or None when it is whole
    outside its module's forward. `model` as the Trainer holds it, wrapper included."""
    if hasattr(weight, "ds_id"):  # set on every parameter that zero.Init/ZeRO-3 partitions
        return "DeepSpeed ZeRO-3 partitions its weight"
    if not torch.distributed.is_available():
        return None
    from torch.distributed import fsdp, tensor

    # FSDP1 wraps modules (its flat shards are plain tensors); FSDP2 makes its modules
    # FSDPModule and its parameters DTensors (both public from torch 2.6: () before, no match)
    wrappers = (fsdp.FullyShardedDataParallel, getattr(fsdp, "FSDPModule", ()))
    modules = (model, *_unwrapped(model).modules())
    if isinstance(weight, getattr(tensor, "DTensor", ())) or any(
        isinstance(module, wrappers) for module in modules
    ):
        return "FSDP shards its weight"
    return None


def _unwrapped(model: Any) -> Any:
    """The model inside a DDP, DeepSpeed or FSDP1 wrapper (hooks and the check belong to it)."""
    return getattr(model, "module", model)


def _output_layer(model: Any):
    get = getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else None
    # exactly nn.Linear: a LoRA or modules_to_save wrapper has no single weight to fuse
    return head if type(head) is torch.nn.Linear else None


def _projection_is_plain(model: Any, head: torch.nn.Linear, inputs: dict, keep) -> bool:
    config = getattr(_unwrapped(model), "config", None)
    if getattr(config, "final_logit_softcapping", None) is not None:  # Gemma 2: tanh-capped
        return False
    with torch.no_grad(), output_layer_inputs(model, skip_projection=False) as captured:
        logits = model(**inputs, logits_to_keep=keep, use_cache=False).logits
    if len(captured) != 1:
        return False
    # The same matmul on the same input gives the same numbers, so the tolerance only absorbs
    # kernel rounding: a loose one let a soft-cap of small logits (tanh(x/c)*c ~ x) pass.
    expected = F.linear(captured[0], head.weight, head.bias)
    return expected.shape == logits.shape and torch.allclose(
        expected.float(), logits.float(), rtol=1e-5, atol=1e-7
    )
