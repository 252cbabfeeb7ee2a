"""`stage: kto`: Kahneman-Tversky optimisation on single responses labelled desirable or
undesirable (`kto_tag`), with a KL reference point from mismatched (prompt, response) pairs."""

from __future__ import annotations

from functools import partial
from typing import Any

from tuneforge.errors import ConfigError
from tuneforge.stages.preference import train_on_preferences

PLOT_KEYS = ("rewards/chosen", "rewards/margins", "kl")


def run(config: Any) -> int:
    finetuning = config.finetuning
    if finetuning.pref_loss != "sigmoid":
        raise ConfigError(
            f"`pref_loss: {finetuning.pref_loss}` applies to `stage: dpo`; KTO has its own loss "
            "(remove the key)."
        )
    if finetuning.ld_alpha is not None:
        raise ConfigError("`ld_alpha` (LD-DPO) applies to `stage: dpo`, not kto; remove it.")

    from tuneforge.training.preference_collate import KTOCollator, with_kl_responses
    from tuneforge.training.preference_trainer import KTOTrainer

    prepare = partial(with_kl_responses, cutoff_len=config.data.cutoff_len)
    return train_on_preferences(config, KTOTrainer, KTOCollator(), PLOT_KEYS, prepare)
