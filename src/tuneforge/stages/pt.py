"""`stage: pt`: continued pretraining on plain documents (packed by default, documents never
attending to each other)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tuneforge.stages.language_model import train_language_model

if TYPE_CHECKING:
    from tuneforge.config.loader import Config


def run(config: Config) -> int:
    return train_language_model(config)
