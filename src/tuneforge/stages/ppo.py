"""`stage: ppo`: the policy (LoRA, freeze or full) learns from a reward model's scores of its own
sampled answers to the dataset's prompts, kept near the reference by a KL penalty. output_dir
holds the policy (adapter or full weights) and its critic's value_head.safetensors."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tuneforge.stages.rm import starting_value_head
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
    from tuneforge.training.ppo import PPOTrainer
    from tuneforge.training.ppo_models import reference, reward_scorer

    # evaluation data was refused with the config (config/checks.py: ppo_has_no_evaluation)
    run = prepare_run(config)
    language_model = load_trainable_model(config, run)
    policy = ModelWithValueHead(language_model, starting_value_head(config, language_model))
    callbacks = standard_callbacks(
        config, run, policy, run.data.train, ("reward",), transformers_loop=False
    )
    policy.to(run.args.device)
    trainer = PPOTrainer(
        model=policy,
        args=run.args,
        train_dataset=run.data.train,
        processing_class=run.tokenizer,
        callbacks=callbacks,
        finetuning=config.finetuning,
        generation=config.generation,
        reward=reward_scorer(config, run, policy),
        reference=reference(config, run, policy),
    )
    return train_and_evaluate(trainer, run)
