"""Training a causal language model on token targets: the body of `pt` and `sft`."""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING, Any

from tuneforge.stages.runner import (
    load_trainable_model,
    prepare_run,
    standard_callbacks,
    train_and_evaluate,
)
from tuneforge.training.collate import PaddingFreeCollator, pack_dataset

logger = logging.getLogger("tuneforge")

if TYPE_CHECKING:
    from tuneforge.config.loader import Config


def train_language_model(config: Config) -> int:
    run = prepare_run(config)
    data = run.data
    train_set = data.train
    if config.data.packing and train_set is not None:
        train_set = pack_dataset(train_set, config.data.cutoff_len)
        if not config.data.neat_packing:
            logger.info(
                "packing: packed examples never attend to each other in tuneforge "
                "(LLaMA-Factory's neat_packing, always on)."
            )
    model = load_trainable_model(config, run)

    from tuneforge.training.trainer import Trainer

    trainer = Trainer(
        model=model,
        args=run.args,
        train_dataset=train_set,
        eval_dataset=data.eval if data.eval_kind != "unsupervised" else None,
        data_collator=PaddingFreeCollator(),
        processing_class=run.tokenizer,
        callbacks=standard_callbacks(config, run, model, train_set),
        finetuning=config.finetuning,
        max_pass_tokens=pass_tokens(config, model),
    )
    status = train_and_evaluate(trainer, run)
    if status == 0 and run.args.do_predict and data.eval_kind == "unsupervised":
        status = _predict(trainer, run)
    return status


def _predict(trainer: Any, run: Any) -> int:
    """sft with predict_with_generate: generated_predictions.jsonl and BLEU/ROUGE."""
    if run.data.eval is None:
        return 0
    from tuneforge.training.predict import predict

    generation = run.config.generation
    if run.config.data.eval_num_beams is not None:  # LLaMA-Factory's beams for evaluation
        generation = dataclasses.replace(generation, num_beams=run.config.data.eval_num_beams)
    scores = predict(trainer, run.data.eval, run.tokenizer, generation)
    metrics = {f"predict_{name}": value for name, value in scores.items()}  # LF's names
    trainer.log_metrics("predict", metrics)
    trainer.save_metrics("predict", metrics)
    return 0


def pass_tokens(config: Config, model: Any) -> int | None:
    """Without gradient checkpointing, every activation of a pass is kept for backward, so
    a batch goes through in passes of at most cutoff_len tokens: the peak memory of one long
    example, whatever the batch size. With checkpointing, one pass (its kept activations are
    small); under DeepSpeed, one pass (see below)."""
    if model.is_activation_checkpointing:
        return None
    if config.training.get("deepspeed"):
        # DeepSpeed's engine steps after every backward it sees (accelerate's no_sync does
        # not hold it back), so a batch in several passes would take several optimizer steps
        return None
    return config.data.cutoff_len
