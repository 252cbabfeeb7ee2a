"""LoRA through peft: new adapters, continued ones, stacked ones.

`adapter_name_or_path` lists adapters to start from. The last one continues training, and
the ones before it are merged into the base weights first; with `create_new_adapter` all of
them are merged and a fresh adapter is trained on top (LLaMA-Factory's behaviour).
"""

from __future__ import annotations

import logging
from typing import Any

from tuneforge.errors import ConfigError

logger = logging.getLogger("tuneforge")


def lora_config(finetuning: Any, model: Any) -> Any:
    from peft import LoraConfig, TaskType

    targets = finetuning.lora_target
    return LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=finetuning.lora_rank,
        lora_alpha=finetuning.lora_alpha,
        lora_dropout=finetuning.lora_dropout,
        # peft's "all-linear" is every linear layer but the output head
        target_modules="all-linear" if targets == ["all"] else _checked_targets(model, targets),
        modules_to_save=finetuning.additional_target,
        use_rslora=finetuning.use_rslora,
        use_dora=finetuning.use_dora,
    )


def _checked_targets(model: Any, targets: list[str]) -> list[str]:
    import torch

    linear = {
        name.split(".")[-1] for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)
    }
    unknown = sorted(set(targets) - linear)
    if unknown:
        raise ConfigError(
            f"`lora_target`: {', '.join(unknown)} is not a linear layer of this model; "
            f"use `all` or some of: {', '.join(sorted(linear))}."
        )
    return targets


def apply_lora(model: Any, finetuning: Any, adapters: list[str] | None) -> Any:
    from peft import PeftModel, get_peft_model

    adapters = list(adapters or [])
    resume = None if finetuning.create_new_adapter or not adapters else adapters.pop()
    for path in adapters:
        model = _load_adapter(PeftModel, model, path, trainable=False).merge_and_unload()
        logger.info("Merged adapter %s into the base weights.", path)
    if resume is not None:
        logger.info("Loaded adapter %s; training goes on from it.", resume)
        return _load_adapter(PeftModel, model, resume, trainable=True)
    return get_peft_model(model, lora_config(finetuning, model))


def _load_adapter(peft_model: Any, model: Any, path: str, trainable: bool) -> Any:
    try:
        return peft_model.from_pretrained(model, path, is_trainable=trainable)
    except (OSError, ValueError) as error:
        raise ConfigError(f"cannot load the adapter at {path}: {error}") from None
