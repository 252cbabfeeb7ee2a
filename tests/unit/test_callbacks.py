"""Callbacks on a real transformers Trainer with a tiny Llama: the JSONL log, loss plots, and
the graceful stop on SIGINT/SIGTERM."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import threading
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    Trainer,
    TrainerCallback,
    TrainerControl,
    TrainerState,
    TrainingArguments,
)

from tuneforge.training.callbacks import (
    LOG_EXTENT,
    TRAINER_LOG,
    JsonlLogCallback,
    LossPlotCallback,
    StopOnSignalCallback,
    cut_trainer_log,
    ema_smooth,
    plot_loss,
    write_log_extent,
)
from tuneforge.training.checkpoints import CheckpointCompleteCallback, find_resumable_checkpoint

SEQ_LEN, BATCH = 8, 2


@pytest.fixture(autouse=True)
def one_thread():
    """A 16-wide model runs fastest on one thread; more spin and wait on a busy CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_trainer(
    output_dir: Path,
    max_steps: int,
    callbacks: list[TrainerCallback],
    save_steps: int = 100,
    eval_steps: int | None = None,
) -> Trainer:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
    )
    ids = torch.randint(0, 64, (16, SEQ_LEN), generator=torch.Generator().manual_seed(0)).tolist()
    data = Dataset.from_dict({"input_ids": ids, "labels": ids})
    args = TrainingArguments(
        output_dir=str(output_dir),
        max_steps=max_steps,
        per_device_train_batch_size=BATCH,
        per_device_eval_batch_size=4,
        learning_rate=1e-2,
        logging_steps=1,
        save_steps=save_steps,
        eval_strategy="steps" if eval_steps else "no",
        eval_steps=eval_steps,
        report_to="none",
        use_cpu=True,
        include_num_input_tokens_seen="all",
        disable_tqdm=True,
    )
    return Trainer(
        model=LlamaForCausalLM(config),
        args=args,
        train_dataset=data,
        eval_dataset=data.select(range(4)) if eval_steps else None,
        callbacks=callbacks,
    )


class StopAt(TrainerCallback):
    """Stops training at a step, saving a checkpoint there."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_save = control.should_training_stop = True


class KillAt(TrainerCallback):
    """Sends signals to this very process at a step."""

    def __init__(self, step: int, signum: int = signal.SIGINT) -> None:
        self.step, self.signum = step, signum

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            os.kill(os.getpid(), self.signum)


def read_log(output_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (output_dir / TRAINER_LOG).read_text().splitlines()]


# ---- trainer_log.jsonl ----


def test_trainer_log_one_line_per_step_then_resume_cuts_and_appends(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / TRAINER_LOG).write_text('{"current_steps": 99}\n')  # an earlier run's line

    make_trainer(out, 6, [JsonlLogCallback(out), StopAt(3)]).train()
    records = read_log(out)
    steps = [r["current_steps"] for r in records if "loss" in r]
    assert steps == [1, 2, 3]  # the stale line is gone: a fresh run starts a fresh file
    for r in records[:3]:
        assert {"current_steps", "total_steps", "loss", "lr", "epoch", "percentage"} <= r.keys()
        assert {"elapsed_time", "remaining_time", "throughput", "total_tokens", "grad_norm"} <= (
            r.keys()
        )
        assert r["total_steps"] == 6
        assert r["percentage"] == round(r["current_steps"] / 6 * 100, 2)
        assert re.fullmatch(r"\d+:\d\d:\d\d", r["elapsed_time"])
        assert re.fullmatch(r"\d+:\d\d:\d\d", r["remaining_time"])
        assert r["throughput"] > 0
        assert r["total_tokens"] == r["current_steps"] * BATCH * SEQ_LEN
        assert math.isfinite(r["loss"]) and r["lr"] > 0

    resumed = make_trainer(out, 6, [JsonlLogCallback(out)])
    resumed.train(resume_from_checkpoint=str(out / "checkpoint-3"))
    records = read_log(out)
    all_steps = [r["current_steps"] for r in records]
    assert all_steps == sorted(all_steps)  # appended, never rewritten
    assert [r["current_steps"] for r in records if "loss" in r] == [1, 2, 3, 4, 5, 6]
    # the stopped session's summary, logged after checkpoint-3 was saved, was cut on resume
    assert [r["current_steps"] for r in records if "train_loss" in r] == [6]
    assert records[-1]["percentage"] == 100
    assert records[-1]["total_tokens"] == 6 * BATCH * SEQ_LEN
    # the Trainer's closing summary passes through unchanged
    assert "train_runtime" in records[-1]


def test_trainer_log_keeps_other_numeric_keys_and_lf_aliases(tmp_path):
    callback = JsonlLogCallback(tmp_path)
    state = TrainerState(global_step=2, max_steps=4, num_input_tokens_seen=0)
    logs = {"loss": 1.5, "learning_rate": 1e-3, "rewards/chosen": 0.25, "rewards/accuracies": 0.5}
    callback.on_log(TrainingArguments(str(tmp_path), report_to="none"), state, None, logs=logs)
    (record,) = read_log(tmp_path)
    assert record["rewards/chosen"] == 0.25 and record["accuracy"] == 0.5
    assert record["lr"] == 1e-3 and "learning_rate" not in record
    assert "throughput" not in record and "total_tokens" not in record  # tokens not counted


def test_resume_cuts_the_log_to_the_checkpoint_eval_lines_included(tmp_path):
    straight = tmp_path / "straight"
    make_trainer(straight, 4, [JsonlLogCallback(straight)], save_steps=2, eval_steps=2).train()
    expected = read_log(straight)
    assert [(r["current_steps"], "eval_loss" in r) for r in expected[:3]] == [
        (1, False),
        (2, False),
        (2, True),  # logged before checkpoint-2 is saved: kept
    ]
    extent = json.loads((straight / "checkpoint-2" / LOG_EXTENT).read_text())
    head = "".join(line + "\n" for line in (straight / TRAINER_LOG).read_text().splitlines()[:3])
    assert extent["global_step"] == 2 and extent["lines"] == 3
    assert extent["bytes"] == len(head.encode())

    # as if killed at step 4: the log runs past checkpoint-2, with a torn last line
    with (straight / TRAINER_LOG).open("a") as f:
        f.write('{"current_steps": 5, "tot')
    resumed = make_trainer(straight, 4, [JsonlLogCallback(straight)], save_steps=2, eval_steps=2)
    resumed.train(resume_from_checkpoint=str(straight / "checkpoint-2"))
    records = read_log(straight)
    assert [r["current_steps"] for r in records] == [r["current_steps"] for r in expected]
    assert [r.keys() - {"throughput"} for r in records] == [
        r.keys() - {"throughput"} for r in expected
    ]
    for got, want in zip(records, expected):
        for key in {"loss", "eval_loss"} & want.keys():
            assert got[key] == pytest.approx(want[key], rel=1e-5)


def lines(*records: dict | str) -> bytes:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records).encode()


def steps(*numbers: int) -> list[dict]:
    return [{"current_steps": n, "loss": 1.0 / n} for n in numbers]


def test_cut_keeps_what_the_checkpoint_recorded(tmp_path):
    checkpoint = tmp_path / "checkpoint-4"
    checkpoint.mkdir()
    log = tmp_path / TRAINER_LOG
    log.write_bytes(lines(*steps(1, 2, 3, 4)))
    write_log_extent(checkpoint, log, 4)
    kept = log.read_bytes()
    # after the save: a summary line of the same step, the next step, a torn line
    log.write_bytes(kept + lines({"current_steps": 4, "train_runtime": 1.0}, *steps(5)) + b'{"cu')
    assert cut_trainer_log(tmp_path, 4) > 0
    assert log.read_bytes() == kept  # the step-4 summary went too: the step alone can't tell
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-4", TRAINER_LOG]  # no temp
    assert cut_trainer_log(tmp_path, 4) == 0  # already there


def test_cut_without_a_record_stops_before_the_first_later_step(tmp_path):
    # a checkpoint of LLaMA-Factory or an older tuneforge: no LOG_EXTENT in it
    (tmp_path / "checkpoint-2").mkdir()
    log = tmp_path / TRAINER_LOG
    log.write_bytes(lines(*steps(1), "not json", *steps(2), {"note": "no step"}, *steps(3, 4)))
    cut_trainer_log(tmp_path, 2)
    assert log.read_bytes() == lines(*steps(1), "not json", *steps(2), {"note": "no step"})


def test_cut_drops_a_torn_last_line(tmp_path):
    log = tmp_path / TRAINER_LOG
    log.write_bytes(lines(*steps(1, 2, 3)) + b'{"current_steps": 4, "lo')  # killed mid-write
    cut_trainer_log(tmp_path, 6)  # nothing past step 6, no checkpoint folder at all
    assert log.read_bytes() == lines(*steps(1, 2, 3))


@pytest.mark.parametrize("damage", ["rewritten", "shorter", "other step", "unreadable"])
def test_cut_falls_back_to_steps_when_the_record_does_not_fit_the_log(tmp_path, damage):
    checkpoint = tmp_path / "checkpoint-2"
    checkpoint.mkdir()
    log = tmp_path / TRAINER_LOG
    log.write_bytes(lines(*steps(1, 2)))
    write_log_extent(checkpoint, log, 2)
    if damage == "rewritten":  # same length, other bytes
        log.write_bytes(lines(*steps(1, 2)).replace(b"0.5", b"0.7") + lines(*steps(3)))
    elif damage == "shorter":
        log.write_bytes(lines(*steps(1)))
    elif damage == "other step":
        write_log_extent(checkpoint, log, 3)
        log.write_bytes(log.read_bytes() + lines(*steps(3)))
    else:
        (checkpoint / LOG_EXTENT).write_text('{"global_step": 2, "by')
        log.write_bytes(log.read_bytes() + lines(*steps(3)))
    before = log.read_bytes()
    cut_trainer_log(tmp_path, 2)
    cut = before.find(b'{"current_steps": 3')
    assert log.read_bytes() == (before if cut == -1 else before[:cut])


def test_cut_of_an_absent_log_writes_nothing(tmp_path):
    assert cut_trainer_log(tmp_path, 3) == 0
    assert not (tmp_path / TRAINER_LOG).exists()


# ---- loss plots ----


def test_loss_plots_are_pngs_of_the_right_size(tmp_path):
    from matplotlib.image import imread

    out = tmp_path / "run"
    make_trainer(out, 6, [JsonlLogCallback(out), LossPlotCallback(out)], eval_steps=2).train()
    assert any("eval_loss" in r for r in read_log(out))
    for name in ("training_loss.png", "training_eval_loss.png"):
        path = out / name
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert imread(path).shape[:2] == (480, 640)


def test_plot_loss_names_files_like_llamafactory_and_skips_missing_keys(tmp_path):
    lines = [{"current_steps": i, "rewards/accuracies": 0.1 * i} for i in range(1, 5)]
    (tmp_path / TRAINER_LOG).write_text("".join(json.dumps(r) + "\n" for r in lines) + '{"torn')
    written = plot_loss(tmp_path, keys=("loss", "rewards/accuracies"))
    assert written == [tmp_path / "training_rewards_accuracies.png"]


def test_ema_smooth_follows_llamafactory_weight():
    assert ema_smooth([]) == []
    assert ema_smooth([2.0, 2.0, 2.0]) == pytest.approx([2.0, 2.0, 2.0])
    weight = 1.8 * (1 / (1 + math.exp(-0.05 * 2)) - 0.5)
    assert ema_smooth([0.0, 1.0]) == pytest.approx([0.0, 1 - weight])


# ---- stop on signal ----


def test_sigint_stops_at_step_boundary_with_checkpoint_then_resumes(tmp_path):
    out = tmp_path / "run"
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    stopper = StopOnSignalCallback()
    trainer = make_trainer(out, 20, [KillAt(3), stopper, CheckpointCompleteCallback()])
    trainer.train()

    assert stopper.interrupted and stopper.stopped_at_step in (3, 4)
    assert trainer.state.global_step == stopper.stopped_at_step
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
    checkpoint = find_resumable_checkpoint(out)
    assert checkpoint == out / f"checkpoint-{stopper.stopped_at_step}"

    resumed = make_trainer(out, 20, [StopOnSignalCallback(), CheckpointCompleteCallback()])
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert resumed.state.global_step == 20
    assert find_resumable_checkpoint(out) == out / "checkpoint-20"


@pytest.fixture
def bare(tmp_path):
    """Real TrainingArguments, TrainerState and TrainerControl for calling hooks directly."""
    args = TrainingArguments(str(tmp_path), report_to="none", use_cpu=True)
    return args, TrainerState(global_step=7, max_steps=20), TrainerControl()


def test_second_sigint_force_quits_and_restores(bare):
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        callback = StopOnSignalCallback()
        callback.on_train_begin(*bare)
        os.kill(os.getpid(), signal.SIGINT)  # first: only a request
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, previous)


def test_sigterm_requests_save_and_stop_then_hands_over(bare):
    args, state, control = bare
    seen = []

    def recorder(signum, frame):
        seen.append(signum)

    previous = signal.signal(signal.SIGTERM, recorder)
    try:
        callback = StopOnSignalCallback()
        callback.on_train_begin(args, state, control)
        callback.on_step_end(args, state, control)
        assert not control.should_training_stop  # nothing asked yet
        os.kill(os.getpid(), signal.SIGTERM)
        callback.on_step_end(args, state, control)
        assert control.should_save and control.should_training_stop
        assert callback.interrupted and callback.stopped_at_step == 7
        os.kill(os.getpid(), signal.SIGTERM)  # second: the previous handler's turn
        assert seen == [signal.SIGTERM]
        assert signal.getsignal(signal.SIGTERM) is recorder
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_handlers_are_left_alone_off_the_main_thread(bare):
    before = signal.getsignal(signal.SIGINT)
    callback = StopOnSignalCallback()
    worker = threading.Thread(target=callback.on_train_begin, args=bare)
    worker.start()
    worker.join()
    assert signal.getsignal(signal.SIGINT) is before
