"""The web workbench's job registry: subprocesses whose output goes to a file, one job at a
time, Abort as SIGINT; and a real `tuneforge train` aborted into a resumable checkpoint."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
import yaml

from tuneforge.errors import EXIT_INTERRUPTED
from tuneforge.training.callbacks import read_trainer_log
from tuneforge.webui.locale import FormError
from tuneforge.webui.monitor import job_message, job_records, progress_of
from tuneforge.webui.runner import JobRegistry

REPO = Path(__file__).resolve().parents[2]

# Stands in for `tuneforge <subcommand> <config>`: writes far more output than a pipe holds
# (64 KiB) without anyone reading it, then runs until SIGINT, which it answers like training.
LOUD_CHILD = r"""
import signal, sys, time
stop = []
signal.signal(signal.SIGINT, lambda *_: stop.append(1))
print(sys.argv[1], open(sys.argv[2]).read(), flush=True)
for i in range(4000):
    print(f"line {i} " + "x" * 60)
sys.stdout.flush()
print("READY", flush=True)
while not stop:
    time.sleep(0.05)
print("stopped cleanly", flush=True)
sys.exit(130)
"""


def wait_for(predicate, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.fixture
def registry():
    jobs = JobRegistry(program=(sys.executable, "-c", LOUD_CHILD))
    yield jobs
    jobs.shutdown(timeout=10)


def test_output_goes_to_a_file_and_abort_stops_the_job_cleanly(registry, tmp_path):
    job = registry.start("train", "train", "stage: sft\n", tmp_path / "run", tmp_path / "run")
    assert job.command == ["tuneforge", "train", str(tmp_path / "run" / "webui_train.yaml")]
    assert job.config_path.read_text() == "stage: sft\n"
    # 250 KB of output with no reader: the child is not blocked on a full pipe
    wait_for(lambda: "READY" in job.log_path.read_text())
    assert job.running and registry.running() is job
    assert job.abort() is True
    assert job.wait(timeout=30) == EXIT_INTERRUPTED
    log = job.log_path.read_text()
    assert log.startswith("train stage: sft") and log.rstrip().endswith("stopped cleanly")
    assert job.abort() is False  # nothing left to stop
    assert "resumable checkpoint" in job_message(job, None, "en")


def test_one_job_at_a_time(registry, tmp_path):
    first = registry.start("train", "train", "a: 1\n", tmp_path / "a", tmp_path / "a")
    with pytest.raises(FormError) as caught:
        registry.start("export", "export", "b: 1\n", tmp_path / "b", tmp_path / "b")
    assert f"A train job is running in {tmp_path / 'a'}" in str(caught.value)
    assert "train" in caught.value.message("zh") and "正在运行" in caught.value.message("zh")
    assert registry.latest("export") is None
    wait_for(lambda: "READY" in first.log_path.read_text())  # its SIGINT handler is set by then
    first.abort()
    first.wait(timeout=30)
    second = registry.start("export", "export", "b: 1\n", tmp_path / "b", tmp_path / "b")
    assert registry.latest("export") is second and registry.latest("train") is first


def test_shutdown_stops_running_jobs(registry, tmp_path):
    job = registry.start("train", "train", "a: 1\n", tmp_path / "a", tmp_path / "a")
    wait_for(lambda: "READY" in job.log_path.read_text())
    registry.shutdown(timeout=30)
    assert job.returncode == EXIT_INTERRUPTED


@pytest.mark.slow
def test_abort_of_real_training_leaves_a_resumable_checkpoint(tiny_model_dir, tmp_path):
    """`tuneforge train` under the registry: Abort (SIGINT) stops it at a step boundary with a
    checkpoint; starting the same YAML again resumes from that step."""
    output = tmp_path / "run"
    config = {
        "model_name_or_path": str(tiny_model_dir),
        "template": "qwen",
        "stage": "sft",
        "do_train": True,
        "finetuning_type": "lora",
        "dataset": "identity",
        "dataset_dir": str(REPO / "data"),
        "data_cache_dir": str(tmp_path / "cache"),
        "cutoff_len": 128,
        "per_device_train_batch_size": 2,
        "max_steps": 10_000,
        "logging_steps": 1,
        "save_steps": 10_000,
        "report_to": "none",
        "output_dir": str(output),
    }
    registry = JobRegistry()
    try:
        job = registry.start("train", "train", yaml.safe_dump(config), output, output)
        wait_for(lambda: len(job_records(job)) >= 2 or not job.running, timeout=300)
        assert job.running, job.log_path.read_text()
        job.abort()
        assert job.wait(timeout=120) == EXIT_INTERRUPTED, job.log_path.read_text()
    finally:
        registry.shutdown(timeout=60)
    stopped = progress_of(read_trainer_log(output)).step
    checkpoint = output / f"checkpoint-{stopped}"
    assert (checkpoint / "tuneforge_complete").is_file(), sorted(output.iterdir())

    config["max_steps"] = stopped + 2
    registry = JobRegistry()
    try:
        job = registry.start("train", "train", yaml.safe_dump(config), output, output)
        assert job.wait(timeout=300) == 0, job.log_path.read_text()
    finally:
        registry.shutdown(timeout=60)
    steps = [r["current_steps"] for r in read_trainer_log(output) if "loss" in r]
    assert steps[-1] == stopped + 2 and steps.count(stopped + 1) == 1  # went on from `stopped`
