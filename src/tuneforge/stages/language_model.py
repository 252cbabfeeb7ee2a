"""Training a causal language model on token targets: the body of `pt` and `sft`."""

from __future__ import annotations

import logging
from typing import Any

from tuneforge.adapters import apply_method, parameter_counts
from tuneforge.config.loader import write_resolved
from tuneforge.data.pipeline import prepare_data
from tuneforge.models.loader import load_model
from tuneforge.models.tokenizer import fit_tokenizer_to_template, load_tokenizer
from tuneforge.templates import template_for
from tuneforge.training.arguments import effective_training_arguments
from tuneforge.training.callbacks import (
    JsonlLogCallback,
    LossPlotCallback,
    StopOnSignalCallback,
)
from tuneforge.training.checkpoints import CheckpointCompleteCallback, resolve_resume
from tuneforge.training.collate import PaddingFreeCollator, pack_dataset
from tuneforge.training.summary import SummaryCallback

logger = logging.getLogger("tuneforge")
INTERRUPTED = 130  # the shell's code for "stopped by Ctrl-C"


def load_tokenizer_and_template(config: Any) -> tuple[Any, Any]:
    """The tokenizer, fitted to the template's stop words, and the template bound to it."""
    tokenizer = load_tokenizer(config.model)
    template = template_for(config.data, tokenizer)
    fit_tokenizer_to_template(tokenizer, template.stop_words, template.replace_eos)
    template = template_for(config.data, tokenizer)  # bound again: the EOS may have changed
    tokenizer.chat_template = template.chat_template  # saved with every checkpoint
    return tokenizer, template


def train_language_model(config: Any) -> int:
    from transformers import set_seed

    args = effective_training_arguments(config)
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
    train_set = data.train
    if config.data.packing and train_set is not None:
        train_set = pack_dataset(train_set, config.data.cutoff_len)

    model = load_model(
        config.model,
        tokenizer,
        template.stop_words,
        training=args,
        cutoff_len=config.data.cutoff_len,
    )
    model = apply_method(
        model, config.finetuning, config.model.adapter_name_or_path, config.finetuning.pure_bf16
    )
    if args.should_save:
        write_resolved(config, args.output_dir, args.to_dict())

    from tuneforge.training.trainer import Trainer

    stopper = StopOnSignalCallback()
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=train_set,
        eval_dataset=data.eval if data.eval_kind != "unsupervised" else None,
        data_collator=PaddingFreeCollator(),
        processing_class=tokenizer,
        callbacks=[
            SummaryCallback(config, parameter_counts(model), train_set),
            JsonlLogCallback(args.output_dir),
            CheckpointCompleteCallback(),
            stopper,
            *([LossPlotCallback(args.output_dir)] if config.finetuning.plot_loss else []),
        ],
        finetuning=config.finetuning,
    )

    if args.do_train:
        try:
            result = trainer.train(resume_from_checkpoint=resume)
        finally:
            stopper.restore()  # a crashed train() never reaches on_train_end
        if stopper.interrupted:
            logger.warning(
                "Stopped at step %d with a checkpoint in %s; run the same command to resume.",
                trainer.state.global_step,
                args.output_dir,
            )
            return INTERRUPTED
        trainer.save_model()
        trainer.save_state()
        trainer.log_metrics("train", result.metrics)
        trainer.save_metrics("train", result.metrics)
    if args.do_eval and trainer.eval_dataset is not None:
        metrics = trainer.evaluate()
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)
    if args.do_predict and data.eval is not None and data.eval_kind == "unsupervised":
        from tuneforge.training.predict import predict

        scores = predict(trainer, data.eval, tokenizer, config.generation)
        metrics = {f"predict_{name}": value for name, value in scores.items()}  # LF's names
        trainer.log_metrics("predict", metrics)
        trainer.save_metrics("predict", metrics)
    return 0
