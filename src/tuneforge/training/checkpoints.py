"""Checkpoints that resuming never trips on.

transformers writes `checkpoint-N/` piece by piece (weights, optimizer, scheduler, RNG, and
trainer_state.json last); a process killed mid-save leaves a partial folder that
`get_last_checkpoint` would pick and then fail to load. We mark each checkpoint once it is fully
written (`tuneforge_complete`). A run resumes from the newest checkpoint that is marked, or,
unmarked (LLaMA-Factory's, plain transformers', or ours killed between the save and the mark),
that holds every file a resume reads (`missing_parts`); others are skipped, saying what they
lack. A checkpoint that a restarted run will overwrite is tombstoned (`tuneforge_superseded`)
until it is saved again, since its files look whole while they are half old, half new.
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
from tuneforge.training.callbacks import write_durably

logger = logging.getLogger(__name__)

MARKER = "tuneforge_complete"
SUPERSEDED = "tuneforge_superseded"
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
# Optimizer and scheduler states (transformers' OPTIMIZER_NAME, OPTIMIZER_NAME_BIN, SCHEDULER_NAME);
# FSDP writes optimizer.bin, optimizer_rank*.bin or an optimizer_0/ folder.
_OPTIMIZER_FILES = ("optimizer.pt", "optimizer.bin")
_SCHEDULER_FILE = "scheduler.pt"
_RNG_FILE = "rng_state.pth"  # rng_state_<rank>.pth in distributed runs
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
    # readers see no marker or a whole one
    write_durably(checkpoint / MARKER, json.dumps({"global_step": global_step}).encode())


def missing_parts(checkpoint: Path) -> list[str]:
    """What a resume reads and `checkpoint` lacks (empty: its files are whole), each phrased
    to follow "no ".

    trainer_state.json (written last, so a save killed earlier has none), naming the folder's
    step; model or adapter weights, with every shard an index lists; the optimizer and
    scheduler states; the RNG state. DeepSpeed keeps weights, optimizer and (its own) scheduler
    in a `global_step*` folder. Only presence is checked: a torn file is caught by the order of
    the save, since trainer_state.json comes after all the others.
    """
    if not checkpoint.is_dir():
        return ["folder"]
    missing = []
    try:
        state = json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        missing.append("readable trainer_state.json")
    else:
        step = state.get("global_step") if isinstance(state, dict) else None
        own = checkpoint_step(checkpoint)
        if own is not None and step != own:  # a folder copied or renamed
            missing.append(f"trainer_state.json for step {own} (it says step {step})")
    names = {p.name for p in checkpoint.iterdir()}
    deepspeed = any(n.startswith("global_step") and (checkpoint / n).is_dir() for n in names)
    weights = [n for n in _WEIGHT_FILES if n in names]
    if not weights and not deepspeed and not any(n.startswith("pytorch_model_fsdp") for n in names):
        missing.append("model weights (" + " / ".join(_WEIGHT_FILES[::2]) + ")")
    for index in (n for n in weights if n.endswith(".index.json")):
        try:
            shards = set(
                json.loads((checkpoint / index).read_text(encoding="utf-8"))["weight_map"].values()
            )
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            missing.append(f"readable {index}")
            continue
        missing += [f"{shard} (listed in {index})" for shard in sorted(shards - names)]
    if not deepspeed and not any(n.startswith("optimizer") for n in names):
        missing.append(" / ".join(_OPTIMIZER_FILES))
    if not deepspeed and _SCHEDULER_FILE not in names:
        missing.append(_SCHEDULER_FILE)
    if _RNG_FILE not in names and not any(re.fullmatch(r"rng_state_\d+\.pth", n) for n in names):
        missing.append(f"{_RNG_FILE} (or rng_state_<rank>.pth)")
    return missing


def resume_problem(checkpoint: Path) -> str | None:
    """Why a run cannot resume from `checkpoint`, or None when it can: not superseded, and
    marked complete or holding every file a resume reads."""
    if (checkpoint / SUPERSEDED).exists():
        return (
            f"`{SUPERSEDED}`: a run that restarted from an earlier step was to save it again, "
            "and may have stopped half-way"
        )
    if is_complete(checkpoint):
        return None
    missing = missing_parts(checkpoint)
    return "no " + ", no ".join(missing) if missing else None


def _supersede(checkpoint: Path, start_step: int) -> None:
    """Tombstones a checkpoint that the run starting at `start_step` will overwrite: the
    tombstone first, then the marker goes, so that no moment finds it resumable."""
    write_durably(checkpoint / SUPERSEDED, json.dumps({"run_started_at": start_step}).encode())
    (checkpoint / MARKER).unlink(missing_ok=True)


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
        # (overwrite_output_dir, or resuming from an earlier checkpoint). Tombstone them, so
        # that a crash in the middle of re-saving one never leaves it looking complete: by its
        # marker, or by its files, which are all there while half of them are old.
        for checkpoint in _checkpoints(_output_dir(args)):
            step = checkpoint_step(checkpoint)
            if (
                step is not None
                and step > state.global_step
                and not (checkpoint / SUPERSEDED).exists()
            ):
                logger.info(
                    "Marking %s superseded: this run starts at step %d.",
                    checkpoint,
                    state.global_step,
                )
                _supersede(checkpoint, state.global_step)

    def on_save(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if not args.should_save:
            return
        checkpoint = _output_dir(args) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        if not checkpoint.is_dir():  # hyper-parameter search saves under run-*/ folders
            logger.warning("No %s to mark complete.", checkpoint)
            return
        # The tombstone goes first: killed in between, the folder's whole files still vouch.
        (checkpoint / SUPERSEDED).unlink(missing_ok=True)
        write_marker(checkpoint, state.global_step)


def _note_unmarked(checkpoint: Path) -> None:
    if not is_complete(checkpoint):
        logger.info(
            "%s has no `%s` marker (written by LLaMA-Factory or transformers, or a save killed "
            "before its marking), but every file a resume reads: resuming from it.",
            checkpoint,
            MARKER,
        )


def find_resumable_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest resumable `checkpoint-N` under output_dir (see `resume_problem`).

    Newer folders that are not resumable (a save that was interrupted, one superseded by a
    restarted run) are skipped with a warning each, saying what it lacks.

    Args:
        output_dir: the training run's output folder.

    Returns:
        The resumable checkpoint folder with the largest N, or None.
    """
    for checkpoint in _checkpoints(Path(output_dir)):
        problem = resume_problem(checkpoint)
        if problem is None:
            _note_unmarked(checkpoint)
            return checkpoint
        logger.warning("Skipping %s for resume: it has %s.", checkpoint, problem)
    return None


def _check_explicit(checkpoint: Path) -> None:
    if not checkpoint.is_dir():
        raise ConfigError(f"resume_from_checkpoint: {checkpoint} does not exist or is no folder.")
    problem = resume_problem(checkpoint)
    if problem is not None:
        raise ConfigError(
            f"resume_from_checkpoint: {checkpoint} is incomplete: it has {problem} (was its save "
            "interrupted?). Point resume_from_checkpoint at an earlier checkpoint."
        )
    _note_unmarked(checkpoint)


def resolve_resume(
    output_dir: str | Path,
    resume_from_checkpoint: str | os.PathLike[str] | bool | None,
    overwrite_output_dir: bool,
    do_train: bool,
) -> str | None:
    """Decides which checkpoint, if any, training resumes from (LLaMA-Factory's rules).

    A checkpoint is resumable when it is marked complete or, unmarked (LLaMA-Factory's), holds
    every file a resume reads, and no restarted run has superseded it (`resume_problem`).

    - A path: it must exist and be resumable; it is used even with overwrite_output_dir.
    - `True`: the newest resumable checkpoint in output_dir; an error if there is none.
    - None (or False), when training without overwrite_output_dir: the newest resumable
      checkpoint in output_dir if any; an error if output_dir holds a finished model but no
      such checkpoint, since training would overwrite that model; else a fresh start.
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
    finished = [name for name in _FINISHED_MODEL_FILES if (output_dir / name).is_file()]
    if finished:
        raise ConfigError(
            f"{output_dir} already holds a trained model ({finished[0]}) and no checkpoint to "
            "resume from. Set `overwrite_output_dir: true` to train over it, or choose another "
            "output_dir."
        )
    return None
