"""`stage: pt`: continued pretraining on plain documents (packed by default, documents never
attending to each other)."""

from typing import Any

from tuneforge.stages.language_model import train_language_model


def run(config: Any) -> int:
    return train_language_model(config)
