"""Pairwise batches: layout, targets, and per-sequence log-probabilities equal to scoring each
sequence alone."""

from __future__ import annotations

import torch

from tuneforge.data.encode import IGNORE_INDEX
from tuneforge.training.loss import sequence_log_probs
from tuneforge.training.preference_collate import PairwiseCollator

PAIRS = [
    {"prompt_ids": [5, 6, 7], "chosen_ids": [8, 9], "rejected_ids": [10, 11, 12]},
    {"prompt_ids": [13, 14], "chosen_ids": [15, 16, 17, 18], "rejected_ids": [19]},
]


def test_pairwise_row_holds_chosen_sides_then_rejected_sides():
    batch = PairwiseCollator()(PAIRS)
    assert batch.input_ids.tolist() == [
        [5, 6, 7, 8, 9, 13, 14, 15, 16, 17, 18, 5, 6, 7, 10, 11, 12, 13, 14, 19]
    ]
    assert batch.cu_seq_lens.tolist() == [0, 5, 11, 17, 20]
    assert batch.position_ids[0, :7].tolist() == [0, 1, 2, 3, 4, 0, 1]
    ignore = IGNORE_INDEX
    # targets shifted within each sequence: prompt positions predict nothing but the first
    # response token; the last token of each sequence predicts nothing
    assert batch.targets[0, :5].tolist() == [ignore, ignore, 8, 9, ignore]
    assert batch.targets[0, 17:].tolist() == [ignore, 19, ignore]
    assert batch.sequence_ends().tolist() == [4, 10, 16, 19]
    assert batch.token_owners().tolist()[:7] == [0, 0, 0, 0, 0, 1, 1]


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
