"""`stage: sft`: supervised fine-tuning on conversations, responses trained, prompts masked;
with `do_predict` + `predict_with_generate`, generated predictions and BLEU/ROUGE."""

from typing import Any

from tuneforge.stages.language_model import train_language_model


def run(config: Any) -> int:
    return train_language_model(config)
