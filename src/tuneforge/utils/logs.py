"""Logging set-up for the command line: concise lines on stderr."""

from __future__ import annotations

import logging
import warnings


def setup_logging(level: int = logging.INFO) -> None:
    """Concise tuneforge lines; under torchrun only rank 0 speaks below warnings."""
    import os

    if int(os.environ.get("RANK", "0")) != 0:
        level = max(level, logging.WARNING)
    logger = logging.getLogger("tuneforge")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("[tuneforge] %(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(level)
    # Library chatter that says nothing a user can act on.
    warnings.filterwarnings("ignore", message=".*torch_dtype.*deprecated.*")
    # transformers' own Trainer and peft still call the gradient_checkpointing_* aliases
    warnings.filterwarnings("ignore", message=".*gradient_checkpointing.*deprecated.*")
