"""Checkpoints that resuming never trips on.

transformers writes `checkpoint-N/` piece by piece (weights, optimizer, scheduler, RNG, trainer
state); a process killed mid-save leaves a partial folder that `get_last_checkpoint` would pick
and then fail to load. We mark each checkpoint once it is fully written and resume only from
marked ones.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from tuneforge.errors import ConfigError

logger = logging.getLogger(__name__)

MARKER = "tuneforge_complete"
# Same pattern as transformers' get_last_checkpoint.
_CHECKPOINT_RE = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")
# Weight files transformers' _load_from_checkpoint accepts (full model, sharded, or adapter).
_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
    "adapter_model.safetensors",
    "adapter_model.bin",
)
# A model saved at the top of output_dir: a run finished there.
_FINISHED_MODEL_FILES = (*_WEIGHT_FILES, "config.json")


def checkpoint_step(path: Path) -> int | None:
    """The N of a `checkpoint-N` folder name, or None for any other name."""
    match = _CHECKPOINT_RE.match(path.name)
    return int(match.group(1)) if match else None


def _checkpoints(output_dir: Path) -> list[Path]:
    """`checkpoint-N` folders under output_dir, newest (largest N) first."""
    if not output_dir.is_dir():
        return []
    found = [
        (step, path)
        for path in output_dir.iterdir()
        if path.is_dir() and (step := checkpoint_step(path)) is not None
    ]
    return [path for _, path in sorted(found, key=lambda item: item[0], reverse=True)]


def _output_dir(args: TrainingArguments) -> Path:
    # typed optional, but TrainingArguments.__post_init__ replaces None with "trainer_output"
    assert args.output_dir is not None
    return Path(args.output_dir)


def is_complete(checkpoint: Path) -> bool:
    """Whether `checkpoint` holds our marker, naming the step of its own folder."""
    try:
        marker = json.loads((checkpoint / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    # A folder copied or renamed with its marker is not the checkpoint the marker vouches for.
    return isinstance(marker, dict) and marker.get("global_step") == checkpoint_step(checkpoint)


def write_marker(checkpoint: Path, global_step: int) -> None:
    """Writes `checkpoint/tuneforge_complete` atomically and durably."""
    tmp = checkpoint / f"{MARKER}.tmp"
    with tmp.open("w", encoding="utf-8") as f:
        json.dump({"global_step": global_step}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, checkpoint / MARKER)  # readers see no marker or a whole one
    if os.name == "posix":  # make the new directory entry itself durable
        fd = os.open(checkpoint, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class CheckpointCompleteCallback(TrainerCallback):
    """Marks each checkpoint complete once the Trainer has written all of it.

    transformers 5.23, trainer.py:2277-2278 (`Trainer._maybe_log_save_evaluate`):
        self._save_checkpoint(model, trial)
        self.control = self.callback_handler.on_save(...)
    so `on_save` runs after `_save_checkpoint` has returned: weights, optimizer, scheduler,
    scaler, RNG state and trainer_state.json are written and old checkpoints rotated. It is the
    only call of on_save. The marker is written by the process that saves (`args.should_save`,
    as for trainer_state.json).
    """

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if not args.should_save:
            return
        # Checkpoints past our starting step belong to an earlier run that this one overwrites
        # (overwrite_output_dir, or resuming from an earlier checkpoint). Unmark them, so that a
        # crash in the middle of re-saving one never leaves it looking complete.
        for checkpoint in _checkpoints(_output_dir(args)):
            step = checkpoint_step(checkpoint)
            if step is not None and step > state.global_step and (checkpoint / MARKER).exists():
                logger.info(
                    "Unmarking %s: this run starts at step %d.", checkpoint, state.global_step
                )
                (checkpoint / MARKER).unlink()

    def on_save(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if not args.should_save:
            return
        checkpoint = _output_dir(args) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        if not checkpoint.is_dir():  # hyper-parameter search saves under run-*/ folders
            logger.warning("No %s to mark complete.", checkpoint)
            return
        write_marker(checkpoint, state.global_step)


def find_resumable_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest complete `checkpoint-N` under output_dir.

    Folders without the completion marker (a save that was interrupted, or a checkpoint written
    by another tool) are skipped, with a warning naming them.

    Args:
        output_dir: the training run's output folder.

    Returns:
        The checkpoint folder with the largest N among complete ones, or None.
    """
    checkpoints = _checkpoints(Path(output_dir))
    incomplete = [c.name for c in checkpoints if not is_complete(c)]
    if incomplete:
        logger.warning(
            "Ignoring checkpoints in %s without the `%s` marker (an interrupted save, or written "
            "by another tool): %s",
            output_dir,
            MARKER,
            ", ".join(incomplete),
        )
    return next((c for c in checkpoints if is_complete(c)), None)


def _missing_parts(checkpoint: Path) -> list[str]:
    """What a resumable checkpoint needs and `checkpoint` lacks (empty: it looks whole)."""
    missing = []
    try:
        json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        missing.append("readable trainer_state.json")
    names = [p.name for p in checkpoint.iterdir()]
    has_weights = any(n in _WEIGHT_FILES for n in names) or any(
        n.startswith(("pytorch_model_fsdp", "global_step"))
        for n in names  # FSDP, DeepSpeed
    )
    if not has_weights:
        missing.append("model weights (" + " / ".join(_WEIGHT_FILES[::2]) + ")")
    return missing


def _check_explicit(checkpoint: Path) -> None:
    if not checkpoint.is_dir():
        raise ConfigError(f"resume_from_checkpoint: {checkpoint} does not exist or is no folder.")
    if is_complete(checkpoint):
        return
    missing = _missing_parts(checkpoint)
    if missing:
        raise ConfigError(
            f"resume_from_checkpoint: {checkpoint} is incomplete: it has no `{MARKER}` marker and "
            f"no {' and no '.join(missing)} (was its save interrupted?). Point "
            "resume_from_checkpoint at an earlier checkpoint."
        )
    # Its files look whole: a checkpoint of LLaMA-Factory or plain transformers. Trust the user.
    logger.warning(
        "%s has no `%s` marker (written by another tool?); resuming.", checkpoint, MARKER
    )


def resolve_resume(
    output_dir: str | Path,
    resume_from_checkpoint: str | os.PathLike[str] | bool | None,
    overwrite_output_dir: bool,
    do_train: bool,
) -> str | None:
    """Decides which checkpoint, if any, training resumes from (LLaMA-Factory's rules).

    - A path: it must exist and be complete; it is used even with overwrite_output_dir.
    - `True`: the newest complete checkpoint in output_dir; an error if there is none.
    - None (or False), when training without overwrite_output_dir: the newest complete
      checkpoint in output_dir if any; an error if output_dir holds a finished model but no
      checkpoint, since training would overwrite that model; else a fresh start.
    - overwrite_output_dir: a fresh start (None).

    Args:
        output_dir: the run's output folder.
        resume_from_checkpoint: the user's `resume_from_checkpoint` value.
        overwrite_output_dir: the user's `overwrite_output_dir` value.
        do_train: whether this run trains; without training nothing is resumed automatically.

    Returns:
        The checkpoint folder to pass to `Trainer.train(resume_from_checkpoint=...)`, or None.

    Raises:
        ConfigError: the checkpoint asked for is missing or incomplete, or output_dir holds
            results that training would overwrite.
    """
    output_dir = Path(output_dir)
    if isinstance(resume_from_checkpoint, (str, os.PathLike)):
        explicit = Path(resume_from_checkpoint)
        _check_explicit(explicit)
        logger.info("Resuming training from %s.", explicit)
        return str(explicit)
    if resume_from_checkpoint is True:
        if overwrite_output_dir:
            raise ConfigError(
                "`resume_from_checkpoint: true` resumes the run in output_dir, but "
                "`overwrite_output_dir: true` starts it afresh: set only one of them."
            )
        checkpoint = find_resumable_checkpoint(output_dir)
        if checkpoint is None:
            raise ConfigError(
                f"resume_from_checkpoint: true, but {output_dir} holds no complete checkpoint-N "
                "folder. Remove the key to start afresh, or give a checkpoint's path."
            )
        logger.info("Resuming training from %s.", checkpoint)
        return str(checkpoint)
    if not do_train or overwrite_output_dir or not output_dir.is_dir():
        return None

    checkpoint = find_resumable_checkpoint(output_dir)
    if checkpoint is not None:
        logger.info(
            "Resuming training from %s (set overwrite_output_dir: true, or choose another "
            "output_dir, to start afresh).",
            checkpoint,
        )
        return str(checkpoint)
    # Unmarked but whole-looking checkpoints (e.g. LLaMA-Factory's): starting afresh would
    # silently throw their progress away and overwrite them, so ask.
    foreign = [c for c in _checkpoints(output_dir) if not _missing_parts(c)]
    if foreign:
        raise ConfigError(
            f"{output_dir} holds {', '.join(c.name for c in foreign)} without tuneforge's "
            f"`{MARKER}` marker (written by another tool?). Resume from one with "
            f"`resume_from_checkpoint: {foreign[0]}`, or set `overwrite_output_dir: true` to "
            "start afresh."
        )
    finished = [name for name in _FINISHED_MODEL_FILES if (output_dir / name).is_file()]
    if finished:
        raise ConfigError(
            f"{output_dir} already holds a trained model ({finished[0]}) and no checkpoint to "
            "resume from. Set `overwrite_output_dir: true` to train over it, or choose another "
            "output_dir."
        )
    return None
