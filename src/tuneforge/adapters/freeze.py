"""Freeze tuning: only some decoder layers (and chosen modules) train.

LLaMA-Factory's rules: `freeze_trainable_layers: N` trains the last N layers, `-N` the first
N; `freeze_trainable_modules` narrows that to modules inside those layers (`all`, or names such
as `mlp`, `self_attn`); `freeze_extra_modules` adds modules outside the layers
(`embed_tokens`, `norm`, `lm_head`).
"""

from __future__ import annotations

import re
from typing import Any

from tuneforge.errors import ConfigError


def layer_count(model: Any) -> int:
    config = model.config
    for name in ("num_hidden_layers", "num_layers", "n_layer"):
        if getattr(config, name, None):
            return getattr(config, name)
    raise ConfigError("freeze tuning: cannot tell how many layers this model has.")


def trainable_layer_ids(count: int, trainable_layers: int) -> list[int]:
    if trainable_layers == 0 or abs(trainable_layers) > count:
        raise ConfigError(
            f"`freeze_trainable_layers: {trainable_layers}` must be between -{count} and {count} "
            f"(not 0) for this model of {count} layers."
        )
    if trainable_layers > 0:
        return list(range(count - trainable_layers, count))
    return list(range(-trainable_layers))


def apply_freeze(model: Any, finetuning: Any) -> None:
    layer_ids = trainable_layer_ids(layer_count(model), finetuning.freeze_trainable_layers)
    names = [name for name, _ in model.named_parameters()]
    layer_modules = _modules_inside_layers(names)
    wanted = finetuning.freeze_trainable_modules
    if wanted != ["all"]:
        unknown = sorted(set(wanted) - layer_modules)
        if unknown:
            raise ConfigError(
                f"`freeze_trainable_modules`: {', '.join(unknown)} not found in the layers; "
                f"they have: {', '.join(sorted(layer_modules))}."
            )
    patterns = [
        f".{index}." if wanted == ["all"] else f".{index}.{module}."
        for index in layer_ids
        for module in wanted
    ]
    extra = finetuning.freeze_extra_modules or []
    outside = {name.split(".")[-2] for name in names if not re.search(r"\.\d+\.", name)}
    unknown = sorted(set(extra) - outside)
    if unknown:
        raise ConfigError(
            f"`freeze_extra_modules`: {', '.join(unknown)} not found outside the layers; "
            f"there are: {', '.join(sorted(outside))}."
        )
    for name, parameter in model.named_parameters():
        in_layers = any(pattern in name for pattern in patterns)
        is_extra = any(f".{module}." in f".{name}" for module in extra)
        parameter.requires_grad_(in_layers or is_extra)


def _modules_inside_layers(names: list[str]) -> set[str]:
    """Names of the modules directly inside numbered layers (`self_attn`, `mlp` ...)."""
    found = set()
    for name in names:
        match = re.search(r"\.\d+\.([^.]+)\.", name)
        if match:
            found.add(match.group(1))
    return found
