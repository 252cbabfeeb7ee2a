"""LoRA through peft: new adapters, continued ones, stacked ones.

`adapter_name_or_path` lists adapters to start from. The last one continues training, and
the ones before it are merged into the base weights first; with `create_new_adapter` all of
them are merged and a fresh adapter is trained on top (LLaMA-Factory's behaviour).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

from tuneforge.adapters.targets import all_linear_targets
from tuneforge.errors import ConfigError, ModelError
from tuneforge.utils.hub import looks_like_path

logger = logging.getLogger("tuneforge")


def lora_config(finetuning: Any, model: Any, resize_vocab: bool = False) -> Any:
    from peft import LoraConfig, TaskType

    targets = finetuning.lora_target
    return LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=finetuning.lora_rank,
        lora_alpha=finetuning.lora_alpha,
        lora_dropout=finetuning.lora_dropout,
        target_modules=(
            all_linear_targets(model) if targets == ["all"] else _checked_targets(model, targets)
        ),
        modules_to_save=finetuning.additional_target or _resized_embeddings(model, resize_vocab),
        use_rslora=finetuning.use_rslora,
        use_dora=finetuning.use_dora,
    )


def _resized_embeddings(model: Any, resize_vocab: bool) -> list[str] | None:
    """With `resize_vocab`, the embedding and output layers train in full beside the adapters
    (LLaMA-Factory's rule, unless `additional_target` names other modules): the new tokens'
    rows would otherwise stay at their random start."""
    if not resize_vocab:
        return None
    layers = [model.get_input_embeddings(), model.get_output_embeddings()]
    names = sorted({name.rpartition(".")[2] for name, m in model.named_modules() if m in layers})
    logger.info("resize_vocab: %s train in full beside the LoRA adapters.", ", ".join(names))
    return names


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


def apply_lora(model: Any, finetuning: Any, model_config: Any, training: bool = True) -> Any:
    """`model` with LoRA adapters: the config's `adapter_name_or_path` merged or continued (in
    `adapter_folder` of each), else new ones (see the module docstring). `training`: whether
    the run trains (do_train), which only changes what the log says of a loaded adapter."""
    from peft import get_peft_model

    adapters = list(model_config.adapter_name_or_path or [])
    folder = model_config.adapter_folder
    resume = None if finetuning.create_new_adapter or not adapters else adapters.pop()
    for path in adapters:
        model = load_adapter(model, path, subfolder=folder).merge_and_unload()
        logger.info("Merged adapter %s into the base weights.", path)
    if resume is not None:
        if training:
            logger.info("Loaded adapter %s; training goes on from it.", resume)
        else:
            logger.info("Loaded adapter %s to evaluate and predict with (no training).", resume)
        return load_adapter(model, resume, trainable=True, subfolder=folder)
    config = lora_config(finetuning, model, model_config.resize_vocab)
    wanted = _targeted_layers(model, config.target_modules)
    adapted = get_peft_model(model, config)
    _warn_of_dropped_targets(adapted, wanted)
    return adapted


def _targeted_layers(model: Any, targets: Any) -> set[str]:
    import re

    if not isinstance(targets, str):
        return set()
    pattern = re.compile(targets)
    return {name for name, _ in model.named_modules() if pattern.fullmatch(name)}


def _warn_of_dropped_targets(adapted: Any, wanted: set[str]) -> None:
    """peft renames the targets of MoE models whose experts transformers 5 fuses into one
    tensor (`gate_proj` becomes the experts' `gate_up_proj`), and so drops the dense and
    shared-expert MLP layers of the same names: say so, never silently."""
    base = adapted.get_base_model()
    have = {name for name, module in base.named_modules() if hasattr(module, "lora_A")}
    dropped = sorted(wanted - have)
    if dropped:
        logger.warning(
            "LoRA: peft left %d of the %d layers of `lora_target: all` without an adapter "
            "(its transformers-5 conversion of %s's MoE layers takes their names for the "
            "fused experts; a peft limitation): %s%s. The attention layers and the experts "
            "have adapters.",
            len(dropped),
            len(wanted),
            getattr(base.config, "model_type", "this model"),
            ", ".join(dropped[:4]),
            " ..." if len(dropped) > 4 else "",
        )


def load_adapter(
    model: Any,
    path: str,
    *,
    trainable: bool = False,
    subfolder: str | None = None,
    key: str = "adapter_name_or_path",
) -> Any:
    """`model` wrapped in a PeftModel with the adapter at `path` (set by config key `key`).

    Raises:
        ConfigError: the adapter folder does not exist, or is a file.
        ModelError: peft cannot load it, or its file lacks weights the model expects.
    """
    from peft import PeftModel

    local = Path(path).expanduser()
    if local.is_file():
        raise ConfigError(f"`{key}`: {path} is a file; give the adapter's folder.")
    if looks_like_path(path) and not local.exists():
        raise ConfigError(f"`{key}`: folder {path} does not exist.")
    kwargs: dict[str, Any] = {"subfolder": subfolder} if subfolder else {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            peft_model = PeftModel.from_pretrained(model, path, is_trainable=trainable, **kwargs)
        except (OSError, ValueError, RuntimeError, KeyError) as error:
            raise ModelError(f"`{key}`: cannot load the adapter at {path}: {error}") from None
    for warning in caught:  # peft only warns when the file lacks weights: an error here
        if "missing adapter keys" in str(warning.message):
            raise ModelError(
                f"`{key}`: the adapter at {path} does not hold weights for every layer it "
                f"adapts ({str(warning.message)[:300]}...): was it trained for another base model?"
            )
        warnings.showwarning(warning.message, warning.category, warning.filename, warning.lineno)
    return peft_model
