"""`stage: kto`: Kahneman-Tversky optimisation on single responses labelled desirable or
undesirable (`kto_tag`), with a KL reference point from mismatched (prompt, response) pairs."""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

from tuneforge.stages.preference import train_on_preferences

if TYPE_CHECKING:
    from tuneforge.config.loader import Config

PLOT_KEYS = ("rewards/chosen", "rewards/margins", "kl")


def run(config: Config) -> int:
    # DPO-only keys were refused with the config (config/checks.py: kto_refuses_dpo_keys)
    from tuneforge.training.preference_collate import KTOCollator, with_kl_responses
    from tuneforge.training.preference_trainer import KTOTrainer

    prepare = partial(with_kl_responses, cutoff_len=config.data.cutoff_len)
    return train_on_preferences(config, KTOTrainer, KTOCollator(), PLOT_KEYS, prepare)
