"""`stage: dpo`: direct preference optimisation on (prompt, chosen, rejected) pairs, with
`pref_loss` sigmoid (DPO), hinge, ipo, or the reference-free orpo and simpo."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tuneforge.stages.preference import train_on_preferences

if TYPE_CHECKING:
    from tuneforge.config.loader import Config

PLOT_KEYS = ("rewards/accuracies", "rewards/margins", "eval_rewards/accuracies")


def run(config: Config) -> int:
    # kto's keys were refused with the config (config/checks.py: kto_weights_need_kto)
    from tuneforge.training.preference_collate import PairwiseCollator
    from tuneforge.training.preference_trainer import DPOTrainer

    return train_on_preferences(config, DPOTrainer, PairwiseCollator(), PLOT_KEYS)
