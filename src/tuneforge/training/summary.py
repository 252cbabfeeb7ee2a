"""The start-up summary: what is trained, on how much data, for how many steps."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from transformers import TrainerCallback

if TYPE_CHECKING:
    from tuneforge.config.loader import Config

logger = logging.getLogger("tuneforge")


class SummaryCallback(TrainerCallback):
    """Logs the summary once the trainer knows the number of steps."""

    def __init__(self, config: Config, counts: tuple[int, int], train_set: Any):
        self.config = config
        self.trainable, self.total = counts
        self.train_set = train_set

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        examples = tokens = 0
        if self.train_set is not None:
            column = self.train_set.column_names
            # preference sets hold prompt_ids, chosen_ids ... rather than input_ids
            id_columns = [c for c in column if c.endswith("_ids")]
            id_columns = ["input_ids"] if "input_ids" in column else id_columns
            rows = zip(*(self.train_set[name] for name in id_columns))
            lengths = [sum(len(ids) for ids in row) for row in rows]
            tokens = sum(lengths)
            examples = (
                sum(len(row) for row in self.train_set["lengths"])
                if "lengths" in column
                else len(lengths)
            )
        effective = args.per_device_train_batch_size * args.gradient_accumulation_steps
        effective *= args.world_size
        finetuning = self.config.finetuning
        logger.info(
            "Training %s (%s, %s): %s trainable of %s parameters (%.4f%%)",
            self.config.model.model_name_or_path,
            finetuning.stage,
            finetuning.finetuning_type,
            f"{self.trainable:,}",
            f"{self.total:,}",
            100 * self.trainable / max(self.total, 1),
        )
        logger.info(
            "Data: %s examples, %s tokens (%s rows%s); effective batch %d (%d x %d x %d "
            "devices); %d steps",
            f"{examples:,}",
            f"{tokens:,}",
            f"{len(self.train_set) if self.train_set is not None else 0:,}",
            ", packed" if self.config.data.packing else "",
            effective,
            args.per_device_train_batch_size,
            args.gradient_accumulation_steps,
            args.world_size,
            state.max_steps,
        )
        model = kwargs.get("model")
        checkpointing = bool(getattr(model, "is_activation_checkpointing", False))
        logger.info("Gradient checkpointing: %s", "on" if checkpointing else "off")
