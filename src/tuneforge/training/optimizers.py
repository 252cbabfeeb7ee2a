"""Optimizer parameter groups beyond transformers' defaults."""

from __future__ import annotations

from typing import Any


def loraplus_groups(
    model: Any, learning_rate: float, ratio: float, embedding_lr: float, weight_decay: float
) -> list[dict[str, Any]]:
    """LoRA+ (Hayou et al., 2024): the B matrices learn `ratio` times faster than the A
    matrices; embedding adapters use their own rate. Biases and norms get no weight decay."""
    groups: dict[tuple[float, float], list[Any]] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        if "lora_embedding" in name:
            rate = embedding_lr
        elif "lora_B" in name:
            rate = learning_rate * ratio
        else:
            rate = learning_rate
        decay = 0.0 if parameter.ndim == 1 or name.endswith(".bias") else weight_decay
        groups.setdefault((rate, decay), []).append(parameter)
    return [
        {"params": params, "lr": rate, "weight_decay": decay}
        for (rate, decay), params in groups.items()
    ]
