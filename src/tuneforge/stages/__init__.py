"""Training stages: each module's `run(config)` is one stage, read top to bottom."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from tuneforge.errors import NotAvailableError

if TYPE_CHECKING:
    from tuneforge.config.loader import Config

STAGES = {
    "pt": "tuneforge.stages.pt",
    "sft": "tuneforge.stages.sft",
    "rm": "tuneforge.stages.rm",
    "ppo": "tuneforge.stages.ppo",
    "dpo": "tuneforge.stages.dpo",
    "kto": "tuneforge.stages.kto",
}


def run_stage(config: Config) -> int:
    stage = config.finetuning.stage
    if stage not in STAGES:
        raise NotAvailableError(f"`stage: {stage}` is not available in this version yet.")
    return importlib.import_module(STAGES[stage]).run(config)
