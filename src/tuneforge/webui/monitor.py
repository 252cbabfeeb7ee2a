"""What the page shows of a job: its state in words, progress, the tail of its log and its
loss curve, read from the files the run writes (the log, trainer_log.jsonl)."""

from __future__ import annotations

import html
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneforge.errors import EXIT_INTERRUPTED
from tuneforge.training.callbacks import TRAINER_LOG, ema_smooth, read_trainer_log
from tuneforge.webui.locale import text
from tuneforge.webui.runner import Job

LOG_TAIL_BYTES = 64 * 1024
LOG_TAIL_LINES = 60
PREDICT_RESULTS = "predict_results.json"
PREDICTIONS_FILE = "generated_predictions.jsonl"


def read_tail(path: Path, max_lines: int = LOG_TAIL_LINES, max_bytes: int = LOG_TAIL_BYTES) -> str:
    """The last lines of a log, as a terminal would show them: a progress bar that redraws
    itself with carriage returns shows its latest state only."""
    if not path.is_file():
        return ""
    with path.open("rb") as handle:
        start = max(path.stat().st_size - max_bytes, 0)
        handle.seek(start)
        data = handle.read()
    if start:  # the window opens inside a line (perhaps inside a character): drop that part
        cut = data.find(b"\n")
        cut = cut if cut >= 0 else data.find(b"\r")  # one long line of progress-bar redraws
        data = data[cut + 1 :]
    lines = []
    for line in data.decode("utf-8", errors="replace").split("\n"):
        redraws = [part for part in line.split("\r") if part.strip()]
        if redraws:
            lines.append(redraws[-1].rstrip())
    return "\n".join(lines[-max_lines:])


def job_records(job: Job) -> list[dict[str, Any]]:
    """trainer_log.jsonl records of this job's run; none until the run has written one (an
    earlier run's file in the same output dir must not pass for this one's progress)."""
    path = job.output_dir / TRAINER_LOG
    if not path.is_file() or path.stat().st_mtime < job.started_at:
        return []
    return read_trainer_log(job.output_dir)


@dataclass(frozen=True)
class Progress:
    step: int
    total: int
    percent: float
    elapsed: str
    remaining: str


def progress_of(records: list[dict[str, Any]]) -> Progress | None:
    """Progress of the newest record that has the step counts."""
    for record in reversed(records):
        if "current_steps" in record and "total_steps" in record:
            total = int(record["total_steps"])
            step = int(record["current_steps"])
            percent = float(record.get("percentage", 100 * step / total if total else 100))
            return Progress(
                step,
                total,
                percent,
                record.get("elapsed_time", ""),
                record.get("remaining_time", ""),
            )
    return None


def loss_points(records: list[dict[str, Any]], key: str = "loss") -> list[tuple[int, float]]:
    """(step, value) of every record that logged a finite `key`."""
    return [
        (int(r["current_steps"]), float(r[key]))
        for r in records
        if isinstance(r.get(key), (int, float)) and math.isfinite(r[key]) and "current_steps" in r
    ]


def loss_frame(records: list[dict[str, Any]], lang: str) -> Any:
    """A long-format table (step, loss, series) of the raw and smoothed loss, for gr.LinePlot."""
    import pandas as pd

    points = loss_points(records)
    steps = [step for step, _ in points]
    raw = [value for _, value in points]
    rows = [(s, v, text(lang, "series_raw")) for s, v in zip(steps, raw)]
    rows += [(s, v, text(lang, "series_smoothed")) for s, v in zip(steps, ema_smooth(raw))]
    return pd.DataFrame(rows, columns=["step", "loss", "series"])


def job_message(job: Job | None, progress: Progress | None, lang: str) -> str:
    """The job's state in words."""
    if job is None:
        return text(lang, "msg_idle")
    code = job.returncode
    if code is None:
        if progress is None:
            return text(lang, "msg_starting")
        return text(lang, "msg_running", **_progress_values(progress))
    if code == 0:
        return text(lang, "msg_finished", path=job.output_dir)
    if code == EXIT_INTERRUPTED:
        return text(lang, "msg_aborted", path=job.output_dir)
    return text(lang, "msg_failed", code=code)


def _progress_values(progress: Progress) -> dict[str, Any]:
    return {
        "step": progress.step,
        "total": progress.total,
        "percent": f"{progress.percent:g}",
        "elapsed": progress.elapsed,
        "remaining": progress.remaining,
    }


def progress_html(job: Job | None, progress: Progress | None, lang: str) -> str:
    """A progress bar with the job's state written on it."""
    percent = progress.percent if progress else 0.0
    if job is not None and job.returncode == 0:
        percent = 100.0  # finished: the last log line may come before the last step
    message = html.escape(job_message(job, progress, lang))
    state = "idle" if job is None else "running" if job.running else f"exit-{job.returncode}"
    return (
        f'<div class="tf-progress" data-state="{state}" data-percent="{percent:g}">'
        f'<div class="tf-progress-bar" style="width:{min(percent, 100):.1f}%"></div>'
        f'<span class="tf-progress-text">{message}</span></div>'
    )


def predict_scores(output_dir: Path) -> dict[str, float]:
    """predict_results.json of a prediction run (BLEU-4, ROUGE-1/2/L ...), empty if absent."""
    path = output_dir / PREDICT_RESULTS
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return {}


def sample_predictions(output_dir: Path, count: int = 5) -> list[dict[str, str]]:
    """The first `count` records of generated_predictions.jsonl (prompt, predict, label)."""
    path = output_dir / PREDICTIONS_FILE
    if not path.is_file():
        return []
    records: list[dict[str, str]] = []
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            if len(records) == count:
                break
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a torn last line while the run is writing
    return records
