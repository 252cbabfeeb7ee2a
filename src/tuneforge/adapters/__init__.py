"""Which weights train: full, freeze (some layers) or LoRA adapters (via peft)."""

from __future__ import annotations

import logging
from typing import Any

import torch

from tuneforge.adapters.freeze import apply_freeze
from tuneforge.adapters.lora import apply_lora

logger = logging.getLogger("tuneforge")


def apply_method(model: Any, finetuning: Any, adapters: list[str] | None, pure_bf16: bool) -> Any:
    """Marks the trainable weights of `model` for `finetuning.finetuning_type` and returns the
    model to train (a PeftModel for LoRA). Trainable weights are kept in float32 unless
    `pure_bf16`, so that optimizer updates are not lost to bf16 rounding."""
    method = finetuning.finetuning_type
    if method == "full":
        model.requires_grad_(True)
    elif method == "freeze":
        apply_freeze(model, finetuning)
    else:
        model = apply_lora(model, finetuning, adapters)
    if not pure_bf16:
        for parameter in model.parameters():
            if parameter.requires_grad and parameter.dtype != torch.float32:
                parameter.data = parameter.data.float()
    return model


def parameter_counts(model: Any) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = total = 0
    for parameter in model.parameters():
        count = parameter.numel()
        total += count
        trainable += count if parameter.requires_grad else 0
    return trainable, total
