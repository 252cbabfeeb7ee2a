"""Trainer callbacks: the JSONL training log, loss plots, and a graceful stop on Ctrl-C/SIGTERM.

The log file name, its key names and the plot file names follow LLaMA-Factory's, so that tools
written for its `trainer_log.jsonl` and `training_loss.png` read ours unchanged.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import signal
import threading
import time
from collections.abc import Iterable, Sequence
from numbers import Real
from pathlib import Path
from types import FrameType
from typing import Any

import torch
import torch.distributed as dist
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

logger = logging.getLogger(__name__)

TRAINER_LOG = "trainer_log.jsonl"
# In each checkpoint-N: how much of trainer_log.jsonl was written when it was saved, so that a
# run resumed from it cuts the log back to exactly there.
LOG_EXTENT = "tuneforge_trainer_log.json"
# Trainer log key -> trainer_log.jsonl key, in LLaMA-Factory's order and spelling.
_LF_KEYS = {
    "loss": "loss",
    "eval_loss": "eval_loss",
    "predict_loss": "predict_loss",
    "reward": "reward",
    "rewards/accuracies": "accuracy",
    "learning_rate": "lr",
    "epoch": "epoch",
}


def _is_number(value: Any) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def _hms(seconds: float) -> str:
    """Seconds as "H:MM:SS" (hours unbounded, where `str(timedelta)` would say "1 day, ...")."""
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class JsonlLogCallback(TrainerCallback):
    """Appends one JSON object per logging step to `output_dir/trainer_log.jsonl`.

    Each line holds `current_steps`, `total_steps`, `loss`/`eval_loss` (when logged), `lr`,
    `epoch`, `percentage`, `elapsed_time`, `remaining_time`, `throughput` (input tokens per
    second since the previous line) and `total_tokens`, then every other numeric key of the
    Trainer's logs unchanged (`grad_norm`, `rewards/chosen` ...). Token counts come from
    `state.num_input_tokens_seen`, so set `include_num_input_tokens_seen="all"`: batches are
    padding-free, so every input token is an effective one ("non_padding" would drop EOS tokens
    where pad == eos).

    A fresh run starts a fresh file. A resumed run (global_step > 0 at train begin) first cuts
    the file back to where it stood when its checkpoint was saved (`cut_trainer_log`), then
    appends, so that every step appears once. To know where that was, each save writes
    `checkpoint-N/tuneforge_trainer_log.json` (`LOG_EXTENT`: the log's length in bytes and lines
    and the SHA-256 of those bytes). Each line is written with one open-append-close, so a web
    UI can tail the file during training.
    """

    def __init__(self, output_dir: str | Path) -> None:
        self.path = Path(output_dir) / TRAINER_LOG
        self._start_time: float | None = None
        self._start_step = 0
        self._last_time = 0.0
        self._last_tokens = 0

    def _start(self, state: TrainerState) -> None:
        self._start_time = self._last_time = time.perf_counter()
        self._start_step = state.global_step
        self._last_tokens = state.num_input_tokens_seen
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if not state.is_world_process_zero:
            return
        self._start(state)
        if state.global_step == 0:
            self.path.write_text("", encoding="utf-8")  # lines of an earlier run would mislead
        else:  # resumed: lines logged after the checkpoint are about to be logged again
            cut_trainer_log(self.path.parent, state.global_step)

    def on_save(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        # on_save follows the checkpoint's save (see checkpoints.py), and the log lines of this
        # step (train, then eval) were written before it.
        if not state.is_world_process_zero:
            return
        checkpoint = self.path.parent / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        if checkpoint.is_dir():  # hyper-parameter search saves under run-*/ folders
            write_log_extent(checkpoint, self.path, state.global_step)

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if not state.is_world_process_zero or logs is None:
            return
        if self._start_time is None:  # evaluate() without train(): no on_train_begin
            self._start(state)
        line = json.dumps(self._record(state, logs))
        # Open, append, close: every line reaches the file at once, even if we are killed.
        with self.path.open("a", encoding="utf-8") as f:
            f.write(line + "\n")

    def _record(self, state: TrainerState, logs: dict[str, Any]) -> dict[str, Any]:
        now, step, total = time.perf_counter(), state.global_step, state.max_steps
        assert self._start_time is not None
        elapsed = now - self._start_time
        # Average over this session's steps only: a resumed run did not do the earlier ones.
        done = step - self._start_step
        remaining = max(total - step, 0) * elapsed / done if done else 0
        record: dict[str, Any] = {"current_steps": step, "total_steps": total}
        for source, name in _LF_KEYS.items():
            if _is_number(logs.get(source)):
                record[name] = logs[source]
        record["percentage"] = round(step / total * 100, 2) if total else 100
        record["elapsed_time"] = _hms(elapsed)
        record["remaining_time"] = _hms(remaining)

        tokens = state.num_input_tokens_seen
        if tokens:
            new_tokens, seconds = tokens - self._last_tokens, now - self._last_time
            if new_tokens > 0 and seconds > 0:  # an eval line at the same step trained nothing
                record["throughput"] = round(new_tokens / seconds, 2)
            record["total_tokens"] = tokens
        self._last_time, self._last_tokens = now, tokens

        for key, value in logs.items():
            if key not in record and key != "learning_rate" and _is_number(value):
                record[key] = value
        return record


def write_durably(path: Path, data: bytes) -> None:
    """Replaces `path` with `data` atomically and durably: readers see the old file or the new
    one, whole, even after a kill or a power cut (temp file in the same folder, fsync,
    os.replace, fsync of the folder)."""
    tmp = path.with_name(f"{path.name}.tmp")
    with tmp.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    if os.name == "posix":  # make the new directory entry itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _whole_lines(data: bytes) -> bytes:
    """`data` up to and including its last newline: a torn last line (a kill mid-write) is
    left out."""
    return data[: data.rfind(b"\n") + 1]


def write_log_extent(checkpoint: Path, log: Path, global_step: int) -> None:
    """Records in `checkpoint/LOG_EXTENT` how much of the training log `log` it covers."""
    data = _whole_lines(log.read_bytes()) if log.is_file() else b""
    extent = {
        "global_step": global_step,
        "bytes": len(data),
        "lines": data.count(b"\n"),
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    write_durably(checkpoint / LOG_EXTENT, json.dumps(extent).encode())


def _extent_cut(data: bytes, checkpoint: Path, global_step: int) -> int | None:
    """Where the checkpoint's `LOG_EXTENT` says to cut `data`, or None when it has none, or one
    that does not describe these bytes (another step, or a log rewritten since)."""
    try:
        extent = json.loads((checkpoint / LOG_EXTENT).read_text(encoding="utf-8"))
        size, digest = extent["bytes"], extent["sha256"]
        ok = extent["global_step"] == global_step and isinstance(size, int) and size >= 0
    except (OSError, ValueError, TypeError, KeyError):
        return None
    if not ok or size > len(data) or (size and data[size - 1 : size] != b"\n"):
        return None
    if hashlib.sha256(data[:size]).hexdigest() != digest:
        return None
    return size


def _step_cut(data: bytes, global_step: int) -> int:
    """The end of the last whole line before the first record whose `current_steps` is past
    `global_step` (checkpoints without a `LOG_EXTENT`). Lines that do not parse are kept, as
    `read_trainer_log` skips them; a torn last line is left out."""
    start = 0
    while (end := data.find(b"\n", start)) != -1:
        try:
            record = json.loads(data[start:end])
        except ValueError:
            record = None
        step = record.get("current_steps") if isinstance(record, dict) else None
        if isinstance(step, int) and step > global_step:
            return start
        start = end + 1
    return start


def cut_trainer_log(output_dir: str | Path, global_step: int) -> int:
    """Cuts `output_dir/trainer_log.jsonl` back to where it stood at the save of step
    `global_step`, before a run resumed from that step logs its steps again.

    With `output_dir/checkpoint-<global_step>/tuneforge_trainer_log.json` (`LOG_EXTENT`), and
    the log still starting with the bytes it describes, the log keeps exactly those bytes: every
    line written after that save goes, eval and summary lines of that very step included.
    Otherwise (a checkpoint of LLaMA-Factory, of an older tuneforge, or one from elsewhere) it
    keeps the lines before the first record past `global_step`. Either way a torn last line
    goes. The file is replaced atomically (`write_durably`).

    Args:
        output_dir: the run's output folder, holding the log and its checkpoints.
        global_step: the step the run resumes from (its trainer_state.json's `global_step`).

    Returns:
        How many bytes were cut (0 when the log is absent or already ends there).
    """
    output_dir = Path(output_dir)
    path = output_dir / TRAINER_LOG
    if not path.is_file():
        return 0
    data = path.read_bytes()
    checkpoint = output_dir / f"{PREFIX_CHECKPOINT_DIR}-{global_step}"
    keep = _extent_cut(data, checkpoint, global_step)
    how = f"as {checkpoint / LOG_EXTENT} records"
    if keep is None:
        keep = _step_cut(data, global_step)
        how = f"at the first record past step {global_step}"
    if keep == len(data):
        return 0
    write_durably(path, data[:keep])
    logger.info(
        "Resuming at step %d: cut %s back to %d lines (%s), dropping %d bytes logged after it.",
        global_step,
        path,
        data[:keep].count(b"\n"),
        how,
        len(data) - keep,
    )
    return len(data) - keep


def read_trainer_log(output_dir: str | Path) -> list[dict[str, Any]]:
    """The records of `output_dir/trainer_log.jsonl` in file order (none if it is absent),
    skipping lines that do not parse."""
    path = Path(output_dir) / TRAINER_LOG
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a killed run can leave a torn last line
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def ema_smooth(values: Sequence[float]) -> list[float]:
    """Exponential moving average, LLaMA-Factory's (TensorBoard-style) loss smoothing.

    The weight grows with the number of points along a sigmoid, from 0 for a single point
    towards 0.9 for long curves, so short curves are barely smoothed.

    Args:
        values: the raw curve.

    Returns:
        The smoothed curve, as long as `values`.
    """
    if not values:
        return []
    weight = 1.8 * (1 / (1 + math.exp(-0.05 * len(values))) - 0.5)
    last, smoothed = values[0], []
    for value in values:
        last = last * weight + (1 - weight) * value
        smoothed.append(last)
    return smoothed


def plot_loss(output_dir: str | Path, keys: Iterable[str] = ("loss", "eval_loss")) -> list[Path]:
    """Plots each key of trainer_log.jsonl against the step, raw and smoothed.

    Writes `output_dir/training_<key>.png` (a "/" in the key becomes "_"), 640x480 pixels, for
    each key that has at least one point; keys without points are skipped.

    Args:
        output_dir: the training run's output folder, holding trainer_log.jsonl.
        keys: log keys to plot.

    Returns:
        The paths of the images written.
    """
    # Agg on a bare Figure: no GUI, and no change to pyplot's global backend.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    output_dir = Path(output_dir)
    records = read_trainer_log(output_dir)
    written = []
    for key in keys:
        points = [
            (r["current_steps"], r[key])
            for r in records
            if _is_number(r.get(key)) and math.isfinite(r[key]) and "current_steps" in r
        ]
        if not points:
            logger.info("No %s in %s to plot.", key, output_dir / TRAINER_LOG)
            continue
        steps, values = zip(*points)
        figure = Figure(figsize=(6.4, 4.8))
        FigureCanvasAgg(figure)
        axes = figure.add_subplot()
        axes.plot(steps, values, color="#1f77b4", alpha=0.4, label="original")
        axes.plot(steps, ema_smooth(values), color="#1f77b4", label="smoothed")
        axes.set_title(f"training {key} of {output_dir}")
        axes.set_xlabel("step")
        axes.set_ylabel(key)
        axes.legend()
        path = output_dir / f"training_{key.replace('/', '_')}.png"
        figure.savefig(path, format="png", dpi=100)
        written.append(path)
    return written


class LossPlotCallback(TrainerCallback):
    """Calls `plot_loss` once training ends (main process only)."""

    def __init__(self, output_dir: str | Path, keys: Sequence[str] = ("loss", "eval_loss")) -> None:
        self.output_dir = Path(output_dir)
        self.keys = tuple(keys)

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if not state.is_world_process_zero:
            return
        # on_train_end runs inside train(), before the caller saves the final model: a plot
        # that fails must not cost the user the model.
        try:
            for path in plot_loss(self.output_dir, self.keys):
                logger.info("Loss curve saved to %s", path)
        except Exception as error:
            logger.warning("Could not plot the loss curves: %s", error)


class StopOnSignalCallback(TrainerCallback):
    """Turns the first SIGINT/SIGTERM into a stop at the next step boundary, with a checkpoint.

    The first signal only sets a flag; at the next `on_step_end` training is told to save a
    checkpoint and stop, so the run can be resumed from exactly there. `interrupted` and
    `stopped_at_step` record what happened. A second signal restores the previous handlers and
    acts as they would (Ctrl-C raises KeyboardInterrupt), so the user can always force-quit.

    Handlers are installed in `on_train_begin` (main thread only: Python allows no other) and
    restored in `on_train_end`; call `restore()` yourself if train() raised. In distributed
    runs the ranks agree on the stop through a small all-reduce each step, so that they all
    stop, and save, at the same step.
    """

    def __init__(self, signals: Sequence[int] = (signal.SIGINT, signal.SIGTERM)) -> None:
        self.signals = tuple(signals)
        self.interrupted = False
        self.stopped_at_step: int | None = None
        self._requested = False
        self._previous: dict[int, Any] = {}
        self._group: Any = None

    def install(self) -> None:
        """Installs the handlers, remembering the previous ones (no-op off the main thread)."""
        if self._previous or threading.current_thread() is not threading.main_thread():
            return
        for signum in self.signals:
            self._previous[signum] = signal.signal(signum, self._on_signal)

    def restore(self) -> None:
        """Puts back the handlers that were installed before `install`."""
        if threading.current_thread() is not threading.main_thread():
            return
        for signum, previous in self._previous.items():
            signal.signal(signum, signal.SIG_DFL if previous is None else previous)
        self._previous.clear()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if not self._requested:
            self._requested = True
            logger.warning(
                "%s received: stopping after this step and saving a checkpoint; "
                "press Ctrl-C again to quit at once.",
                signal.Signals(signum).name,
            )
            return
        previous = self._previous.get(signum)
        self.restore()
        if callable(previous):
            previous(signum, frame)
        elif signum == signal.SIGINT:
            raise KeyboardInterrupt
        else:  # SIG_DFL or SIG_IGN before us: force-quit means the default action
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self.interrupted, self.stopped_at_step, self._requested = False, None, False
        distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        if distributed and self._group is None:
            # A CPU (gloo) group: the per-step agreement never waits on the GPU.
            self._group = dist.new_group(backend="gloo")
        self.install()

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        requested = self._requested
        if self._group is not None:
            flag = torch.tensor([int(requested)], dtype=torch.int32)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self._group)
            requested = bool(flag.item())
        if not requested or self.interrupted:
            return
        control.should_save = True
        control.should_training_stop = True
        self.interrupted, self.stopped_at_step = True, state.global_step
        logger.warning("Stopping at step %d and saving a checkpoint.", state.global_step)

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self.restore()
