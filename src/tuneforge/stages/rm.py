"""`stage: rm`: a reward model, a scalar value head on the causal LM trained on preference pairs
(LoRA, freeze or full; the head always trains fully). output_dir holds the adapter or the full
weights plus value_head.safetensors; evaluation reports pairwise accuracy, and `do_predict`
writes each held-out pair's scores to generated_predictions.jsonl."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tuneforge.stages.runner import (
    load_trainable_model,
    prepare_run,
    standard_callbacks,
    train_and_evaluate,
)

if TYPE_CHECKING:
    from tuneforge.config.loader import Config


def run(config: Config) -> int:
    from tuneforge.models.value_head import ModelWithValueHead
    from tuneforge.training.preference_collate import PairwiseCollator
    from tuneforge.training.reward import RewardTrainer

    run = prepare_run(config)
    language_model = load_trainable_model(config, run)
    model = ModelWithValueHead(language_model, starting_value_head(config, language_model))
    trainer = RewardTrainer(
        model=model,
        args=run.args,
        train_dataset=run.data.train,
        eval_dataset=run.data.eval,
        data_collator=PairwiseCollator(),
        processing_class=run.tokenizer,
        callbacks=standard_callbacks(config, run, model, run.data.train, ("rewards/accuracies",)),
        finetuning=config.finetuning,
    )
    status = train_and_evaluate(trainer, run)
    if status == 0 and run.args.do_predict and run.data.eval is not None:
        from pathlib import Path

        from tuneforge.training.predict import PREDICTIONS_FILE
        from tuneforge.training.reward import predict_scores

        path = Path(run.args.output_dir) / PREDICTIONS_FILE
        metrics = predict_scores(trainer, run.data.eval, str(path))
        trainer.log_metrics("predict", metrics)
        trainer.save_metrics("predict", metrics)
    return status


def starting_value_head(config: Config, model: Any) -> Any:
    """The head saved with the adapter that training goes on from, or with the model
    (LLaMA-Factory's rule), else a new one; trainable weights are float32 unless pure_bf16."""
    import torch

    from tuneforge.models.tokenizer import base_model_path
    from tuneforge.models.value_head import load_value_head, new_value_head

    adapters = config.model.adapter_name_or_path
    continued = adapters[-1] if adapters and not config.finetuning.create_new_adapter else None
    head = load_value_head(continued or base_model_path(config.model)) or new_value_head(model)
    dtype = model.dtype if config.finetuning.pure_bf16 else torch.float32
    return head.to(dtype=dtype)
