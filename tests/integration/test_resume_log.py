"""`tuneforge train` killed with SIGKILL and run again: it resumes from the newest whole
checkpoint, trainer_log.jsonl holds every step exactly once, and the final weights and losses
are an uninterrupted run's.

Each kill is a real SIGKILL of the training process, sent by the process to itself at a fixed
point (a wrapper patches one hook before tuneforge starts), so that the points are the same on
a slow machine as on a fast one: after a step's log line, in the middle of a save, in the middle
of a log line. `benchmarks/resume_soak.py` kills at random moments from outside instead.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from conftest import DATA_DIR
from tuneforge.training.callbacks import TRAINER_LOG, read_trainer_log
from tuneforge.training.checkpoints import MARKER, SUPERSEDED

pytestmark = pytest.mark.slow

MAX_STEPS, SAVE_STEPS = 6, 2

# Runs `tuneforge train CONFIG`, SIGKILLing itself where KILL_AT says:
#   log:N   right after step N's line is in trainer_log.jsonl
#   torn:N  half-way through writing step N's line
#   save:N  in the middle of saving checkpoint-N (weights, optimizer and scheduler written;
#           RNG state and trainer_state.json not yet)
KILLER = r"""
import os, signal, sys

kind, _, at = os.environ.get("KILL_AT", "").partition(":")
at = int(at or 0)


def die():
    os.kill(os.getpid(), signal.SIGKILL)


if kind in ("log", "torn"):
    from tuneforge.training.callbacks import JsonlLogCallback

    on_log = JsonlLogCallback.on_log

    def patched(self, args, state, control, logs=None, **kwargs):
        if state.global_step == at and logs and "loss" in logs and kind == "torn":
            line = __import__("json").dumps(self._record(state, logs))
            with self.path.open("a", encoding="utf-8") as f:
                f.write(line[: len(line) // 2])
            die()
        on_log(self, args, state, control, logs=logs, **kwargs)
        if state.global_step == at and logs and "loss" in logs:
            die()

    JsonlLogCallback.on_log = patched
elif kind == "save":
    from transformers import Trainer

    save_rng_state = Trainer._save_rng_state

    def patched(self, output_dir):
        if self.state.global_step == at:
            die()
        save_rng_state(self, output_dir)

    Trainer._save_rng_state = patched

from tuneforge.cli.main import main

sys.exit(main(["train", sys.argv[1]]))
"""


def write_config(model_dir: Path, output_dir: Path) -> Path:
    config = {
        "model_name_or_path": str(model_dir),
        "template": "qwen",
        "stage": "sft",
        "do_train": True,
        "finetuning_type": "full",
        "dataset": "identity",
        "dataset_dir": str(DATA_DIR),
        "data_cache_dir": str(output_dir.parent / f"{output_dir.name}-cache"),
        "cutoff_len": 128,
        "per_device_train_batch_size": 2,
        "learning_rate": 5e-3,
        "max_steps": MAX_STEPS,
        "save_steps": SAVE_STEPS,
        "logging_steps": 1,
        "seed": 0,
        "disable_gradient_checkpointing": True,
        "plot_loss": False,
        "report_to": "none",
        "output_dir": str(output_dir),
    }
    path = output_dir.parent / f"{output_dir.name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def start(config: Path, kill_at: str = "") -> subprocess.Popen[str]:
    # One thread each: the same arithmetic in every process, and two fit a 2-core runner.
    env = {**os.environ, "KILL_AT": kill_at, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    return subprocess.Popen(
        [sys.executable, "-c", KILLER, str(config)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finish(process: subprocess.Popen[str]) -> tuple[int, str]:
    output, _ = process.communicate(timeout=300)
    return process.returncode, output


def run(config: Path, kill_at: str = "") -> str:
    code, output = finish(start(config, kill_at))
    expected = -signal.SIGKILL if kill_at else 0
    assert code == expected, f"exit {code}, expected {expected}:\n{output[-4000:]}"
    return output


def log_steps(output_dir: Path) -> list[int]:
    return [r["current_steps"] for r in read_trainer_log(output_dir) if "loss" in r]


def test_killed_runs_resume_with_each_step_logged_once(tiny_model_dir, tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    straight_config = write_config(tiny_model_dir, straight)
    config = write_config(tiny_model_dir, killed)

    reference = start(straight_config)  # alongside the killed runs
    run(config, "log:3")  # step 3 logged after checkpoint-2
    assert log_steps(killed) == [1, 2, 3]

    run(config, "save:4")  # resumes from 2; dies saving checkpoint-4
    assert log_steps(killed) == [1, 2, 3, 4]  # 3 once: cut back to checkpoint-2 on resume
    partial = killed / "checkpoint-4"
    assert partial.is_dir() and not (partial / "trainer_state.json").exists()

    output = run(config, "torn:5")  # skips the partial checkpoint-4, resumes from 2 again
    assert f"Skipping {partial} for resume: it has no " in output
    assert "rng_state.pth" in output and "trainer_state.json" in output
    assert (partial / MARKER).is_file() and not (partial / SUPERSEDED).exists()  # saved anew
    assert log_steps(killed) == [1, 2, 3, 4]
    assert not (killed / TRAINER_LOG).read_bytes().endswith(b"\n")  # step 5's line is torn

    run(config)  # resumes from checkpoint-4 to the end
    code, output = finish(reference)
    assert code == 0, output[-4000:]
    got, want = read_trainer_log(killed), read_trainer_log(straight)
    assert log_steps(killed) == list(range(1, MAX_STEPS + 1))
    assert [r["current_steps"] for r in got] == [r["current_steps"] for r in want]
    assert (killed / TRAINER_LOG).read_text().count("\n") == len(want)  # the torn line is gone
    losses = [r["loss"] for r in got if "loss" in r]
    assert losses == pytest.approx([r["loss"] for r in want if "loss" in r], rel=1e-6)
    assert [r.get("total_tokens") for r in got] == [r.get("total_tokens") for r in want]

    final, expected = (
        load_file(killed / "model.safetensors"),
        load_file(straight / "model.safetensors"),
    )
    assert final.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(final[name], expected[name], msg=name)
    state = json.loads((killed / "trainer_state.json").read_text())
    assert state["global_step"] == MAX_STEPS


def test_a_finished_run_run_again_trains_no_further(tiny_model_dir, tmp_path):
    """Resuming from the final checkpoint (a kill after the last save, or the same command
    again) adds no step: transformers 5 on its own trains one past max_steps."""
    from conftest import training_config
    from tuneforge.stages import run_stage

    out = tmp_path / "out"
    keys = {"max_steps": 2, "save_strategy": "steps", "save_steps": 2}
    assert run_stage(training_config(tiny_model_dir, out, **keys)) == 0
    before = load_file(out / "adapter_model.safetensors")
    assert run_stage(training_config(tiny_model_dir, out, **keys)) == 0
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 2
    assert not (out / "checkpoint-3").exists()
    after = load_file(out / "adapter_model.safetensors")
    for name, tensor in before.items():
        torch.testing.assert_close(after[name], tensor)
    steps = [r["current_steps"] for r in read_trainer_log(out) if "loss" in r]
    assert steps == [1, 2]
