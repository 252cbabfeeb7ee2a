"""What the web workbench shows of a job: log tails, progress and loss curves from
trainer_log.jsonl, prediction scores and samples."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from tuneforge.training.callbacks import ema_smooth
from tuneforge.webui.monitor import (
    job_message,
    job_records,
    loss_frame,
    progress_html,
    progress_of,
    read_tail,
    sample_predictions,
)
from tuneforge.webui.runner import Job


def record(step: int, total: int = 10, **extra) -> dict:
    return {
        "current_steps": step,
        "total_steps": total,
        "percentage": round(100 * step / total, 2),
        "elapsed_time": f"0:00:{step:02d}",
        "remaining_time": f"0:00:{total - step:02d}",
        **extra,
    }


def finished_job(tmp_path, code: int, started_at: float | None = None) -> Job:
    process = subprocess.Popen([sys.executable, "-c", f"raise SystemExit({code})"])
    process.wait()
    return Job(
        "train",
        ["tuneforge", "train", "x.yaml"],
        tmp_path / "x.yaml",
        tmp_path / "log",
        tmp_path,
        process,
        started_at or time.time(),
    )


def test_log_tail_shows_the_last_state_of_redrawn_progress_bars(tmp_path):
    log = tmp_path / "log"
    log.write_bytes(b"start\n 10%|#    | 1/10\r 50%|###  | 5/10\r100%|#####| 10/10\ndone\n")
    assert read_tail(log) == "start\n100%|#####| 10/10\ndone"
    log.write_text("".join(f"line {i}\n" for i in range(500)))
    assert read_tail(log, max_lines=3) == "line 497\nline 498\nline 499"
    assert read_tail(tmp_path / "missing") == ""


def test_log_tail_survives_a_cut_multibyte_character(tmp_path):
    log = tmp_path / "log"
    log.write_bytes("训练开始\n".encode() * 3)
    tail = read_tail(log, max_bytes=15)  # the window opens inside a character of line 2
    assert tail == "训练开始"
    log.write_bytes(b"".join(f"\r{i:05d}/99999 steps".encode() for i in range(9000)))
    assert read_tail(log, max_bytes=1000) == "08999/99999 steps"  # one line of redraws only


def test_progress_comes_from_the_newest_record_with_step_counts():
    records = [record(3), record(5, loss=1.0), {"eval_loss": 2.0}]
    progress = progress_of(records)
    assert (progress.step, progress.total, progress.percent) == (5, 10, 50.0)
    assert (progress.elapsed, progress.remaining) == ("0:00:05", "0:00:05")
    assert progress_of([]) is None


def test_loss_frame_holds_the_raw_and_the_smoothed_curve():
    losses = [3.0, 2.5, float("nan"), 2.0, 1.0]
    records = [record(i + 1, loss=v) for i, v in enumerate(losses)] + [record(5, eval_loss=9.0)]
    frame = loss_frame(records, "en")
    raw = frame[frame.series == "original"]
    smooth = frame[frame.series == "smoothed"]
    assert list(raw.step) == [1, 2, 4, 5] and list(raw.loss) == [3.0, 2.5, 2.0, 1.0]
    assert list(smooth.loss) == pytest.approx(ema_smooth([3.0, 2.5, 2.0, 1.0]))
    assert set(loss_frame(records, "zh").series) == {"原始", "平滑"}
    assert loss_frame([], "en").empty


def test_an_earlier_runs_log_does_not_pass_for_the_new_jobs_progress(tmp_path):
    log = tmp_path / "trainer_log.jsonl"
    log.write_text(json.dumps(record(10, loss=0.5)) + "\n")
    os.utime(log, (time.time() - 100, time.time() - 100))
    job = finished_job(tmp_path, 0, started_at=time.time() - 10)
    assert job_records(job) == []
    log.write_text(log.read_text() + json.dumps(record(11, total=20, loss=0.4)) + "\n")
    assert [r["current_steps"] for r in job_records(job)] == [10, 11]


@pytest.mark.parametrize(
    ("code", "words"),
    [
        (0, "Finished: the output is in"),
        (130, "Aborted: a resumable checkpoint"),
        (1, "exit status 1"),
    ],
)
def test_job_message_tells_how_the_job_ended(tmp_path, code, words):
    job = finished_job(tmp_path, code)
    assert words in job_message(job, None, "en")
    html = progress_html(job, progress_of([record(4)]), "en")
    assert f'data-state="exit-{code}"' in html
    assert ('data-percent="100"' in html) == (code == 0)


def test_progress_bar_of_a_running_job(tmp_path):
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        job = Job("train", [], tmp_path / "x", tmp_path / "log", tmp_path, process)
        assert job_message(job, None, "en").startswith("Starting")
        html = progress_html(job, progress_of([record(3)]), "zh")
        assert 'data-state="running"' in html and 'data-percent="30"' in html
        assert "运行中 3/10（30%）：已用 0:00:03，剩余 0:00:07" in html
    finally:
        process.kill()
        process.wait()
    assert progress_html(None, None, "en").count("No job is running.") == 1


def test_prediction_samples_stop_at_a_torn_line(tmp_path):
    lines = [json.dumps({"prompt": f"p{i}", "predict": "a", "label": "b"}) for i in range(3)]
    (tmp_path / "generated_predictions.jsonl").write_text("\n".join(lines) + '\n{"prompt": "p')
    assert [r["prompt"] for r in sample_predictions(tmp_path, count=10)] == ["p0", "p1", "p2"]
    assert len(sample_predictions(tmp_path, count=2)) == 2
