"""The steps every training stage shares, in the order a stage calls them:

    run = prepare_run(config)                      # arguments, seed, resume point, tokenizer, data
    model = load_trainable_model(config, run)      # model + full/freeze/lora, resolved.yaml
    trainer = SomeTrainer(..., callbacks=standard_callbacks(config, run, model, train_set))
    return train_and_evaluate(trainer, run)        # train (Ctrl-C safe), save, metrics, eval

A stage module (pt, sft, rm, dpo, kto, ppo) picks its Trainer, collator and extra models in
between; nothing else is stage-specific.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tuneforge.adapters import apply_method, parameter_counts
from tuneforge.config.loader import write_resolved
from tuneforge.data.pipeline import PreparedData, prepare_data
from tuneforge.errors import EXIT_INTERRUPTED
from tuneforge.models.loader import device_type, load_model
from tuneforge.models.tokenizer import load_tokenizer_and_template
from tuneforge.training.arguments import effective_training_arguments
from tuneforge.training.callbacks import JsonlLogCallback, LossPlotCallback, StopOnSignalCallback
from tuneforge.training.checkpoints import CheckpointCompleteCallback, resolve_resume
from tuneforge.training.memory import (
    ContiguousTrainingState,
    contiguous_state_applies,
    fix_mmap_threshold,
)
from tuneforge.training.summary import SummaryCallback
from tuneforge.training.zero3 import set_moe_leaf_modules

if TYPE_CHECKING:
    from tuneforge.config.loader import Config

logger = logging.getLogger("tuneforge")


@dataclass
class PreparedRun:
    """What a stage needs before it builds its model and Trainer."""

    config: Config
    args: Any  # transformers' Seq2SeqTrainingArguments, as effective on this machine
    resume: str | bool | None
    tokenizer: Any
    template: Any
    data: PreparedData
    stopper: StopOnSignalCallback


def prepare_run(config: Config) -> PreparedRun:
    """Training arguments, seed, resume point, tokenizer and template, encoded data."""
    from transformers import set_seed

    args = effective_training_arguments(config)
    if device_type() == "cpu":
        fix_mmap_threshold()  # big activations go back to the system when freed
    set_seed(args.seed)
    resume = resolve_resume(
        args.output_dir,
        args.resume_from_checkpoint,
        config.extras.overwrite_output_dir,
        args.do_train,
    )
    tokenizer, template = load_tokenizer_and_template(config)
    # encode once: per node, or once in all when the nodes share a file system
    local = not config.data.data_shared_file_system
    with args.main_process_first(desc="encoding the datasets", local=local):
        data = prepare_data(config, tokenizer, template)
    return PreparedRun(config, args, resume, tokenizer, template, data, StopOnSignalCallback())


def load_trainable_model(config: Config, run: PreparedRun) -> Any:
    """The model with its finetuning method applied; writes resolved.yaml."""
    from transformers import set_seed

    model = load_model(
        config.model,
        run.tokenizer,
        run.template.stop_words,
        training=run.args,
        cutoff_len=config.data.cutoff_len,
    )
    set_moe_leaf_modules(model)  # under ZeRO-3, before the engine wraps the model
    set_seed(run.args.seed)  # a new adapter's init draws from the seed, not from the load's RNG
    model = apply_method(model, config.finetuning, config.model, run.args.do_train)
    if run.args.should_save:
        write_resolved(config, run.args.output_dir, run.args.to_dict())
    return model


def standard_callbacks(
    config: Config,
    run: PreparedRun,
    model: Any,
    train_set: Any,
    plot_keys: tuple[str, ...] = (),
    transformers_loop: bool = True,
) -> list[Any]:
    """Summary, trainer_log.jsonl, checkpoint markers, Ctrl-C handling and the loss plot.

    `plot_keys` adds a stage's own metrics (e.g. rewards/accuracies) to the loss plot.
    `transformers_loop`: the trainer steps through transformers' own training loop (whose
    gradient and optimizer events ContiguousTrainingState relies on).
    """
    callbacks = [
        SummaryCallback(config, parameter_counts(model), train_set),
        JsonlLogCallback(run.args.output_dir),
        CheckpointCompleteCallback(),
        run.stopper,
    ]
    if transformers_loop and contiguous_state_applies(run.args):
        callbacks.append(ContiguousTrainingState())
    if config.finetuning.plot_loss:
        callbacks.append(LossPlotCallback(run.args.output_dir, ("loss", "eval_loss", *plot_keys)))
    if config.finetuning.early_stopping_steps is not None:
        from transformers import EarlyStoppingCallback

        patience = config.finetuning.early_stopping_steps
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=patience))
    return callbacks


def effective_tokens_per_second(tokens: int, runtime: float, args: Any) -> float:
    """Trained tokens (every process's: padding-free batches hold no padding) per second and
    per process, LLaMA-Factory's `effective_tokens_per_sec`."""
    return tokens / max(runtime, 1e-9) / max(args.world_size, 1)


def train_and_evaluate(trainer: Any, run: PreparedRun) -> int:
    """Trains (stopping cleanly on Ctrl-C/SIGTERM), saves, writes metrics, then evaluates.

    Returns the process exit code: 0, or EXIT_INTERRUPTED after a stop with a resumable checkpoint.
    """
    args = run.args
    if args.do_train:
        try:
            result = trainer.train(resume_from_checkpoint=run.resume)
        finally:
            run.stopper.restore()  # a crashed train() never reaches on_train_end
        if run.stopper.interrupted:
            logger.warning(
                "Stopped at step %d with a checkpoint in %s; run the same command to resume.",
                trainer.state.global_step,
                args.output_dir,
            )
            return EXIT_INTERRUPTED
        trainer.save_model()
        trainer.save_state()
        if run.config.finetuning.include_effective_tokens_per_second:
            result.metrics["effective_tokens_per_sec"] = effective_tokens_per_second(
                trainer.state.num_input_tokens_seen, result.metrics["train_runtime"], args
            )
        trainer.log_metrics("train", result.metrics)
        trainer.save_metrics("train", result.metrics)
    if args.do_eval and trainer.eval_dataset is not None:
        metrics = trainer.evaluate()
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)
    return 0
