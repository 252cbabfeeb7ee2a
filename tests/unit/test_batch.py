"""The padding-free batch type: layout, ownership of tokens, cutting into passes, moving, and
the names transformers' Trainer reads."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from tuneforge.data.batch import PaddingFreeBatch, sequence_bounds
from tuneforge.data.encode import IGNORE_INDEX
from tuneforge.training.collate import PaddingFreeCollator

X = IGNORE_INDEX  # an untrained target


def lengths_batch(*lengths: int) -> PaddingFreeBatch:
    examples = [{"input_ids": list(range(10 * k, 10 * k + n))} for k, n in enumerate(lengths)]
    return PaddingFreeCollator()(examples)


def test_from_sequences_shifts_targets_within_each_sequence():
    batch = PaddingFreeBatch.from_sequences([([1, 2, 3], [X, 2, 3]), ([4, 5], [4, 5])])
    assert batch.input_ids.tolist() == [[1, 2, 3, 4, 5]]
    assert batch.position_ids.tolist() == [[0, 1, 2, 0, 1]]
    assert batch.targets.tolist() == [[2, 3, X, 5, X]]
    assert batch.cu_seq_lens.tolist() == [0, 3, 5] and batch.cu_seq_lens.dtype == torch.int32
    assert batch.max_length == 3 and batch.num_tokens == 5 and batch.num_sequences == 2


def test_token_owners_ends_and_trained_positions():
    batch = lengths_batch(3, 1, 4)
    assert batch.token_owners().tolist() == [0, 0, 0, 1, 2, 2, 2, 2]
    assert batch.sequence_ends().tolist() == [2, 3, 7]
    assert batch.sequence_lengths().tolist() == [3, 1, 4]
    # pretraining: every token but each sequence's last is trained
    assert batch.trained_positions().tolist() == [0, 1, 4, 5, 6]


def test_model_inputs_carry_the_boundaries_and_no_targets():
    batch = lengths_batch(2, 3)
    inputs = batch.model_inputs()
    assert set(inputs) == {
        "input_ids",
        "position_ids",
        "cu_seq_lens_q",
        "cu_seq_lens_k",
        "max_length_q",
        "max_length_k",
    }
    assert inputs["cu_seq_lens_q"].tolist() == [0, 2, 5] and inputs["max_length_k"] == 3
    pixels = torch.zeros(4, 6)
    extended = dataclasses.replace(batch, extra_inputs={"pixel_values": pixels})
    assert extended.model_inputs()["pixel_values"] is pixels


def test_passes_keep_whole_sequences_within_the_budget():
    batch = lengths_batch(3, 4, 6, 2)
    rows = batch.passes(7)
    # 3+4 fit in 7; 6 alone; 2 joins nothing before it that fits (6+2 > 7)
    assert [row.cu_seq_lens.tolist() for row in rows] == [[0, 3, 7], [0, 6], [0, 2]]
    assert sum(row.num_tokens for row in rows) == batch.num_tokens
    assert rows[1].input_ids.tolist() == [[20, 21, 22, 23, 24, 25]]
    assert rows[1].position_ids.tolist() == [[0, 1, 2, 3, 4, 5]]
    assert rows[0].max_length == 4
    assert torch.equal(torch.cat([row.targets for row in rows], dim=1), batch.targets)
    # a sequence longer than the budget is a pass of its own
    assert [row.num_tokens for row in batch.passes(2)] == [3, 4, 6, 2]
    assert [row.num_tokens for row in batch.passes(100)] == [15]


def test_selected_sequences_leave_the_stage_data_behind():
    batch = dataclasses.replace(
        lengths_batch(2, 3, 1, 4),
        kto_tags=torch.tensor([True, False]),
        ref_log_probs=torch.tensor([-1.0, -2.0, -3.0, -4.0]),
    )
    tail = batch.select_sequences(2, 4)
    assert tail.input_ids.tolist() == [[20, 30, 31, 32, 33]]
    assert tail.cu_seq_lens.tolist() == [0, 1, 5] and tail.max_length == 4
    assert tail.kto_tags is None and tail.ref_log_probs is None


def test_a_batch_with_extra_inputs_is_not_cut_silently():
    batch = dataclasses.replace(lengths_batch(2, 3), extra_inputs={"pixel_values": torch.ones(2)})
    with pytest.raises(ValueError, match="extra model inputs"):
        batch.select_sequences(0, 1)


def test_to_moves_every_tensor_and_keeps_the_rest():
    batch = dataclasses.replace(
        lengths_batch(2, 3),
        kto_tags=torch.tensor([True]),
        extra_inputs={"pixel_values": torch.ones(2)},
    )
    moved = batch.to("meta")
    assert all(
        t.device.type == "meta"
        for t in (moved.input_ids, moved.position_ids, moved.targets, moved.cu_seq_lens)
    )
    assert moved.kto_tags.device.type == "meta" and moved.ref_log_probs is None
    assert moved.extra_inputs["pixel_values"].device.type == "meta"
    assert moved.max_length == batch.max_length
    assert batch.input_ids.device.type == "cpu"  # the original is unchanged


def test_transformers_reads_tokens_and_targets_by_name():
    batch = lengths_batch(2, 3)
    assert "input_ids" in batch and "labels" in batch and "shift_labels" in batch
    assert "attention_mask" not in batch  # no padding, so no mask to count tokens by
    assert batch["input_ids"] is batch.input_ids
    assert batch["shift_labels"] is batch.targets and batch["labels"] is batch.targets


def test_sequence_bounds_as_attention_sees_them():
    batch = lengths_batch(2, 3)
    assert sequence_bounds(batch.model_inputs(), 5) == [0, 2, 5]
    # without cu_seq_lens, from positions restarting at 0
    assert sequence_bounds({"position_ids": batch.position_ids}, 5) == [0, 2, 5]
    single = lengths_batch(4)
    assert sequence_bounds(single.model_inputs(), 4) is None
    assert sequence_bounds({"position_ids": single.position_ids}, 4) is None
    assert sequence_bounds({}, 4) is None
