"""Pairwise batches: layout, targets, and per-sequence log-probabilities equal to scoring each
sequence alone."""

from __future__ import annotations

import torch

from tuneforge.data.encode import IGNORE_INDEX
from tuneforge.training.loss import sequence_log_probs
from tuneforge.training.preference_collate import (
    PairwiseCollator,
    sequence_ends,
    sequence_of_positions,
)

PAIRS = [
    {"prompt_ids": [5, 6, 7], "chosen_ids": [8, 9], "rejected_ids": [10, 11, 12]},
    {"prompt_ids": [13, 14], "chosen_ids": [15, 16, 17, 18], "rejected_ids": [19]},
]


def test_pairwise_row_holds_chosen_sides_then_rejected_sides():
    batch = PairwiseCollator()(PAIRS)
    assert batch["input_ids"].tolist() == [
        [5, 6, 7, 8, 9, 13, 14, 15, 16, 17, 18, 5, 6, 7, 10, 11, 12, 13, 14, 19]
    ]
    assert batch["cu_seq_lens_q"].tolist() == [0, 5, 11, 17, 20]
    assert batch["position_ids"][0, :7].tolist() == [0, 1, 2, 3, 4, 0, 1]
    ignore = IGNORE_INDEX
    # targets shifted within each sequence: prompt positions predict nothing but the first
    # response token; the last token of each sequence predicts nothing
    assert batch["shift_labels"][0, :5].tolist() == [ignore, ignore, 8, 9, ignore]
    assert batch["shift_labels"][0, 17:].tolist() == [ignore, 19, ignore]
    assert sequence_ends(batch).tolist() == [4, 10, 16, 19]
    assert sequence_of_positions(batch).tolist()[:7] == [0, 0, 0, 0, 0, 1, 1]


def test_sequence_log_probs_equal_each_sequence_scored_alone(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="eager")
    model.eval()
    batch = PairwiseCollator()(PAIRS)
    with torch.no_grad():
        log_probs, counts = sequence_log_probs(model, batch)
        assert counts.tolist() == [2, 4, 3, 1]
        for index, (prompt, response) in enumerate(
            [(p["prompt_ids"], p["chosen_ids"]) for p in PAIRS]
            + [(p["prompt_ids"], p["rejected_ids"]) for p in PAIRS]
        ):
            ids = torch.tensor([[*prompt, *response]])
            logits = model(input_ids=ids).logits[0].log_softmax(-1)
            expected = sum(
                logits[len(prompt) - 1 + k, token].item() for k, token in enumerate(response)
            )
            assert abs(log_probs[index].item() - expected) < 1e-4


def test_split_row_keeps_whole_examples_within_the_budget():
    from tuneforge.training.collate import PaddingFreeCollator, split_row

    examples = [{"input_ids": list(range(10 * k, 10 * k + n))} for k, n in enumerate([3, 4, 6, 2])]
    batch = PaddingFreeCollator()(examples)
    rows = split_row(batch, 7)
    # 3+4 fit in 7; 6 alone; 2 joins nothing before it that fits (6+2 > 7)
    assert [row["cu_seq_lens_q"].tolist() for row in rows] == [[0, 3, 7], [0, 6], [0, 2]]
    assert sum(row["input_ids"].shape[1] for row in rows) == batch["input_ids"].shape[1]
    assert rows[1]["input_ids"].tolist() == [[20, 21, 22, 23, 24, 25]]
    assert rows[1]["position_ids"].tolist() == [[0, 1, 2, 3, 4, 5]]
    assert rows[0]["max_length_q"] == 4
    # an example longer than the budget is a pass of its own
    assert [row["input_ids"].shape[1] for row in split_row(batch, 2)] == [3, 4, 6, 2]
