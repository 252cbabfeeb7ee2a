"""Completion markers on real Trainer checkpoints, and the rules for what a run resumes from:
marked ones, unmarked ones (LLaMA-Factory's) whose files are whole, never superseded ones."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    Trainer,
    TrainerControl,
    TrainerState,
    TrainingArguments,
)

from tuneforge.errors import ConfigError
from tuneforge.training.checkpoints import (
    MARKER,
    SUPERSEDED,
    CheckpointCompleteCallback,
    find_resumable_checkpoint,
    missing_parts,
    resolve_resume,
    write_marker,
)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A 4-step run with checkpoint-2 and checkpoint-4, saved through the real Trainer."""
    out = tmp_path_factory.mktemp("trained") / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a 16-wide model runs fastest on one thread
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
    )
    ids = torch.randint(0, 64, (8, 8), generator=torch.Generator().manual_seed(0)).tolist()
    args = TrainingArguments(
        output_dir=str(out),
        max_steps=4,
        per_device_train_batch_size=2,
        logging_steps=1,
        save_steps=2,
        report_to="none",
        use_cpu=True,
        include_num_input_tokens_seen="all",
        disable_tqdm=True,
    )
    trainer = Trainer(
        model=LlamaForCausalLM(config),
        args=args,
        train_dataset=Dataset.from_dict({"input_ids": ids, "labels": ids}),
        callbacks=[CheckpointCompleteCallback()],
    )
    trainer.train()
    torch.set_num_threads(threads)
    return out


@pytest.fixture
def run(trained, tmp_path) -> Path:
    """A private copy of the trained run, free to damage."""
    return Path(shutil.copytree(trained, tmp_path / "run"))


@pytest.fixture
def log(caplog):
    """Captures tuneforge.training.checkpoints' records even if tuneforge stops propagation."""
    logger = logging.getLogger("tuneforge.training.checkpoints")
    logger.addHandler(caplog.handler)
    caplog.set_level(logging.INFO, logger="tuneforge.training.checkpoints")
    yield caplog
    logger.removeHandler(caplog.handler)


def test_on_save_marks_each_checkpoint(trained):
    for step in (2, 4):
        marker = trained / f"checkpoint-{step}" / MARKER
        assert json.loads(marker.read_text()) == {"global_step": step}
    assert find_resumable_checkpoint(trained) == trained / "checkpoint-4"


def test_incomplete_checkpoint_is_skipped_with_a_warning(run, log):
    # a save killed half-way: no marker, and a file missing
    shutil.copytree(run / "checkpoint-4", run / "checkpoint-6")
    (run / "checkpoint-6" / MARKER).unlink()
    (run / "checkpoint-6" / "model.safetensors").unlink()
    assert find_resumable_checkpoint(run) == run / "checkpoint-4"
    assert "checkpoint-6" in log.text
    assert resolve_resume(run, None, overwrite_output_dir=False, do_train=True) == str(
        run / "checkpoint-4"
    )
    with pytest.raises(ConfigError, match=str(run / "checkpoint-6")) as error:
        resolve_resume(run, str(run / "checkpoint-6"), False, True)
    assert "model weights" in str(error.value)


def test_a_marker_copied_with_its_folder_vouches_for_nothing(run):
    shutil.copytree(run / "checkpoint-4", run / "checkpoint-6")  # marker says step 4
    assert find_resumable_checkpoint(run) == run / "checkpoint-4"


def test_checkpoints_sort_by_step_number(tmp_path):
    for step in (9, 10, 2):
        (tmp_path / f"checkpoint-{step}").mkdir()
        write_marker(tmp_path / f"checkpoint-{step}", step)
    (tmp_path / "checkpoint-latest").mkdir()
    assert find_resumable_checkpoint(tmp_path) == tmp_path / "checkpoint-10"
    assert find_resumable_checkpoint(tmp_path / "absent") is None


def test_a_new_run_supersedes_the_checkpoints_it_will_overwrite(run, log):
    # resuming from step 2: checkpoint-4 is re-saved later, and a crash then must not leave
    # the old marker, or its whole-looking files, vouching for half-new ones
    args = TrainingArguments(str(run), report_to="none", use_cpu=True)
    callback = CheckpointCompleteCallback()
    callback.on_train_begin(args, TrainerState(global_step=2), TrainerControl())
    assert not (run / "checkpoint-4" / MARKER).exists()
    assert (run / "checkpoint-4" / SUPERSEDED).exists()
    assert (run / "checkpoint-2" / MARKER).exists()
    assert not missing_parts(run / "checkpoint-4")  # its files alone would pass
    assert find_resumable_checkpoint(run) == run / "checkpoint-2"
    assert f"Skipping {run / 'checkpoint-4'}" in log.text and SUPERSEDED in log.text
    with pytest.raises(ConfigError, match=SUPERSEDED):
        resolve_resume(run, str(run / "checkpoint-4"), False, True)

    # saved again: the tombstone goes, the marker comes back
    callback.on_save(args, TrainerState(global_step=4), TrainerControl())
    assert not (run / "checkpoint-4" / SUPERSEDED).exists()
    assert find_resumable_checkpoint(run) == run / "checkpoint-4"


def test_explicit_path(run, log):
    checkpoint = run / "checkpoint-2"
    assert resolve_resume(run, str(checkpoint), False, True) == str(checkpoint)
    assert resolve_resume(run, checkpoint, True, True) == str(checkpoint)  # wins over overwrite

    missing = run / "checkpoint-99"
    with pytest.raises(ConfigError, match=f"{missing} does not exist"):
        resolve_resume(run, str(missing), False, True)

    (checkpoint / MARKER).unlink()  # looks whole, e.g. written by LLaMA-Factory: accepted
    assert resolve_resume(run, str(checkpoint), False, True) == str(checkpoint)
    assert "no `tuneforge_complete` marker" in log.text
    (checkpoint / "trainer_state.json").write_text('{"global_st')
    with pytest.raises(ConfigError, match=f"{checkpoint} is incomplete.*trainer_state.json"):
        resolve_resume(run, str(checkpoint), False, True)


def test_true_means_the_newest_complete_checkpoint(run, tmp_path):
    assert resolve_resume(run, True, False, True) == str(run / "checkpoint-4")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match=f"{empty} holds no complete checkpoint"):
        resolve_resume(empty, True, False, True)
    with pytest.raises(ConfigError, match="overwrite_output_dir"):
        resolve_resume(run, True, True, True)


def test_auto_resume_and_fresh_starts(run, tmp_path):
    assert resolve_resume(run, None, False, True) == str(run / "checkpoint-4")
    assert resolve_resume(run, False, False, True) == str(run / "checkpoint-4")
    assert resolve_resume(run, None, True, True) is None  # overwrite: start afresh
    assert resolve_resume(run, None, False, False) is None  # not training
    assert resolve_resume(tmp_path / "new", None, False, True) is None


def test_finished_model_without_checkpoint_is_not_overwritten(tmp_path):
    out = tmp_path / "done"
    out.mkdir()
    (out / "adapter_model.safetensors").write_bytes(b"")
    (out / "trainer_log.jsonl").write_text("")
    with pytest.raises(ConfigError, match=f"{out} already holds a trained model") as error:
        resolve_resume(out, None, False, True)
    assert "overwrite_output_dir: true" in str(error.value)
    assert resolve_resume(out, None, True, True) is None


def test_unmarked_whole_checkpoints_are_resumed(run, log):
    # LLaMA-Factory's checkpoints: transformers' files, no tuneforge marker
    for checkpoint in run.glob("checkpoint-*"):
        (checkpoint / MARKER).unlink()
    assert resolve_resume(run, None, False, True) == str(run / "checkpoint-4")
    assert f"{run / 'checkpoint-4'} has no `{MARKER}` marker" in log.text
    assert resolve_resume(run, True, False, True) == str(run / "checkpoint-4")


@pytest.mark.parametrize(
    "gone",
    ["trainer_state.json", "model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth"],
)
def test_unmarked_checkpoint_missing_a_file_is_skipped_naming_it(run, log, gone):
    for checkpoint in run.glob("checkpoint-*"):
        (checkpoint / MARKER).unlink()
    (run / "checkpoint-4" / gone).unlink()
    assert find_resumable_checkpoint(run) == run / "checkpoint-2"
    (line,) = {r.getMessage() for r in log.records if "Skipping" in r.getMessage()}
    assert str(run / "checkpoint-4") in line and gone in line
    with pytest.raises(ConfigError, match=f"checkpoint-4 is incomplete.*{gone}"):
        resolve_resume(run, str(run / "checkpoint-4"), False, True)


def test_unmarked_checkpoint_needs_readable_state_of_its_step_and_every_shard(run):
    checkpoint = run / "checkpoint-4"
    (checkpoint / MARKER).unlink()
    state = checkpoint / "trainer_state.json"
    text = state.read_text()
    state.write_text(text[: len(text) // 2])  # killed while writing it
    assert missing_parts(checkpoint) == ["readable trainer_state.json"]
    state.write_text(json.dumps({**json.loads(text), "global_step": 2}))  # a copied folder
    assert missing_parts(checkpoint) == ["trainer_state.json for step 4 (it says step 2)"]
    state.write_text(text)
    assert missing_parts(checkpoint) == []

    # sharded weights: every shard the index lists must be there
    (checkpoint / "model.safetensors").rename(checkpoint / "model-00001-of-00002.safetensors")
    index = {
        "weight_map": {
            "a": "model-00001-of-00002.safetensors",
            "b": "model-00002-of-00002.safetensors",
        }
    }
    (checkpoint / "model.safetensors.index.json").write_text(json.dumps(index))
    assert missing_parts(checkpoint) == [
        "model-00002-of-00002.safetensors (listed in model.safetensors.index.json)"
    ]
    assert find_resumable_checkpoint(run) == run / "checkpoint-2"

    # a distributed run's RNG states, one per rank
    (checkpoint / "model.safetensors.index.json").unlink()
    (checkpoint / "model-00001-of-00002.safetensors").rename(checkpoint / "model.safetensors")
    (checkpoint / "rng_state.pth").rename(checkpoint / "rng_state_0.pth")
    assert missing_parts(checkpoint) == []
