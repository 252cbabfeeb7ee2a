"""The training arguments a run actually uses: the config's, plus what tuneforge's batching
and devices require. Every adjustment is visible in resolved.yaml."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from tuneforge.errors import ConfigError
from tuneforge.utils.devices import cpu_only_distributed

if TYPE_CHECKING:
    from tuneforge.config.loader import Config

logger = logging.getLogger("tuneforge")


def effective_training_arguments(config: Config) -> Any:
    """Seq2SeqTrainingArguments for `config`, adjusted for padding-free training."""
    import torch
    from transformers import Seq2SeqTrainingArguments

    values = dict(config.training)
    if not values.get("output_dir"):
        raise ConfigError("`output_dir` is required: the folder where the run is saved.")
    if not torch.cuda.is_available():
        values["dataloader_pin_memory"] = False  # nothing to pin memory for
        for precision in ("bf16", "fp16"):
            if values.get(precision):
                logger.warning("No CUDA device: %s is off, training runs in float32.", precision)
                values[precision] = False
    values["use_cpu"] = values.get("use_cpu") or cpu_only_distributed()  # else no DDP on CPU
    # Our batches carry example boundaries and shifted targets the model must not drop.
    values["remove_unused_columns"] = False
    values["label_names"] = ["labels"]
    # Padding-free: every input token is an effective token, so "all" counts them exactly.
    values["include_num_input_tokens_seen"] = "all"
    if config.finetuning.disable_shuffling:
        values["train_sampling_strategy"] = "sequential"
    if config.finetuning.finetuning_type == "lora":
        values.setdefault("ddp_find_unused_parameters", False)
    if config.extras.tensorboard_dir:
        import os

        # transformers' TensorBoard callback reads its folder from this variable only
        os.environ["TENSORBOARD_LOGGING_DIR"] = config.extras.tensorboard_dir
    try:
        return Seq2SeqTrainingArguments(**values)
    except (ValueError, TypeError) as error:
        raise ConfigError(f"training arguments in {config.source}: {error}") from None
