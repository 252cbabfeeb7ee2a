"""`stage: sft`: supervised fine-tuning on conversations, responses trained, prompts masked;
with `do_predict` + `predict_with_generate`, generated predictions and BLEU/ROUGE."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tuneforge.stages.language_model import train_language_model

if TYPE_CHECKING:
    from tuneforge.config.loader import Config


def run(config: Config) -> int:
    return train_language_model(config)
