"""Training on preferences: the body of `dpo` and `kto`, which differ only in their Trainer,
their collator and what their datasets need before batching."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from tuneforge.stages.runner import (
    load_trainable_model,
    prepare_run,
    standard_callbacks,
    train_and_evaluate,
)

if TYPE_CHECKING:
    from tuneforge.config.loader import Config


def train_on_preferences(
    config: Config,
    trainer_class: type,
    collator: Any,
    plot_keys: tuple[str, ...],
    prepare: Callable[[Any], Any] | None = None,
) -> int:
    """Encodes the data, loads the policy and its reference, trains, saves and evaluates.

    Args:
        config: the run's Config.
        trainer_class: DPOTrainer or KTOTrainer.
        collator: builds a batch's padding-free row from encoded examples.
        plot_keys: the stage's metrics drawn next to the loss with `plot_loss`.
        prepare: applied to the train and eval sets before training (KTO's mismatched pairs).

    Returns:
        The process exit code (see runner.train_and_evaluate).
    """
    run = prepare_run(config)
    train_set, eval_set = run.data.train, run.data.eval
    if prepare is not None:
        train_set = prepare(train_set) if train_set is not None else None
        eval_set = prepare(eval_set) if eval_set is not None else None
    model = load_trainable_model(config, run)

    from tuneforge.training.reference import load_reference

    trainer = trainer_class(
        model=model,
        args=run.args,
        train_dataset=train_set,
        eval_dataset=eval_set,
        data_collator=collator,
        processing_class=run.tokenizer,
        callbacks=standard_callbacks(config, run, model, train_set, plot_keys=plot_keys),
        finetuning=config.finetuning,
        reference=load_reference(config, run),  # held by the trainer only: it may free it
    )
    if config.finetuning.precompute_ref_log_probs:
        trainer.precompute_reference()
    return train_and_evaluate(trainer, run)
