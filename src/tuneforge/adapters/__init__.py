"""Which weights train: full, freeze (some layers) or LoRA adapters (via peft)."""

from __future__ import annotations

import logging
import os
from typing import Any

import torch

from tuneforge.adapters.freeze import apply_freeze
from tuneforge.adapters.lora import apply_lora

logger = logging.getLogger("tuneforge")


def apply_method(model: Any, finetuning: Any, model_config: Any, training: bool = True) -> Any:
    """Marks the trainable weights of `model` for `finetuning.finetuning_type` and returns the
    model to train (a PeftModel for LoRA). Trainable weights are kept in float32 unless
    `pure_bf16`, so that optimizer updates are not lost to bf16 rounding. With
    `print_param_status`, every parameter's name, dtype, device and trainability is printed
    (by the first process), as LLaMA-Factory does. `training`: whether the run trains
    (do_train); a run that only evaluates or predicts logs a loaded adapter as such."""
    method = finetuning.finetuning_type
    if method == "full":
        model.requires_grad_(True)
    elif method == "freeze":
        apply_freeze(model, finetuning)
    else:
        model = apply_lora(model, finetuning, model_config, training)
    if not finetuning.pure_bf16:
        for parameter in model.parameters():
            if parameter.requires_grad and parameter.dtype != torch.float32:
                parameter.data = parameter.data.float()
    if model_config.print_param_status and os.environ.get("LOCAL_RANK", "0") == "0":
        for name, parameter in model.named_parameters():
            print(
                f"name: {name}, dtype: {parameter.dtype}, device: {parameter.device}, "
                f"trainable: {parameter.requires_grad}"
            )
    return model


def parameter_counts(model: Any) -> tuple[int, int]:
    """(trainable, total) parameter counts (under ZeRO-3 the real sizes, not the empty
    placeholders' sizes)."""
    trainable = total = 0
    for parameter in model.parameters():
        count = getattr(parameter, "ds_numel", None) or parameter.numel()
        total += count
        trainable += count if parameter.requires_grad else 0
    return trainable, total
