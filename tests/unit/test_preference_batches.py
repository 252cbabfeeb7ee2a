"""KTO batches (examples, then mismatched pairs), cutting a row in halves, precomputed reference
columns, and per-sequence log-probabilities with LD-DPO weights."""

from __future__ import annotations

import datasets
import pytest
import torch

from tuneforge.data.batch import PaddingFreeBatch
from tuneforge.data.encode import IGNORE_INDEX
from tuneforge.training.loss import sequence_log_probs
from tuneforge.training.preference_collate import (
    KTOCollator,
    PairwiseCollator,
    WithReferenceLogProbs,
    prompt_and_response,
    with_kl_responses,
)

FEEDBACK = {
    "prompt_ids": [[5, 6, 7], [13, 14], [20]],
    "response_ids": [[8, 9], [15, 16, 17], [21, 22, 23, 24]],
    "kto_tag": [True, False, True],
}
PAIRS = [
    {"prompt_ids": [5, 6, 7], "chosen_ids": [8, 9], "rejected_ids": [10, 11, 12]},
    {"prompt_ids": [13, 14], "chosen_ids": [15, 16, 17, 18], "rejected_ids": [19]},
]


def test_each_prompt_borrows_the_previous_examples_response():
    dataset = with_kl_responses(datasets.Dataset.from_dict(FEEDBACK), cutoff_len=64)
    # LLaMA-Factory's +1 offset: the first example takes the last one's response
    assert dataset["kl_response_ids"] == [[21, 22, 23, 24], [8, 9], [15, 16, 17]]


def test_a_borrowed_response_is_cut_to_fit_the_cutoff():
    dataset = with_kl_responses(datasets.Dataset.from_dict(FEEDBACK), cutoff_len=5)
    # prompt 0 has 3 tokens: 2 left of the 4-token response it borrows
    assert dataset["kl_response_ids"][0] == [21, 22]
    assert all(
        len(p) + len(r) <= 5 for p, r in zip(dataset["prompt_ids"], dataset["kl_response_ids"])
    )


def test_kto_row_holds_the_examples_then_their_mismatched_pairs():
    dataset = with_kl_responses(datasets.Dataset.from_dict(FEEDBACK), cutoff_len=64)
    batch = KTOCollator()(list(dataset))
    assert batch.kto_tags.tolist() == [True, False, True]
    assert batch.cu_seq_lens.tolist() == [0, 5, 10, 15, 22, 26, 30]
    ids = batch.input_ids[0].tolist()
    assert ids[:5] == [5, 6, 7, 8, 9]  # prompt 0 + its response
    assert ids[15:22] == [5, 6, 7, 21, 22, 23, 24]  # prompt 0 + the borrowed response
    # only response tokens are targets, in the mismatched pairs too
    assert batch.targets[0, 15:22].tolist() == [
        IGNORE_INDEX,
        IGNORE_INDEX,
        21,
        22,
        23,
        24,
        IGNORE_INDEX,
    ]


def test_selecting_sequences_gives_the_rows_of_each_half():
    sequences = [prompt_and_response(p["prompt_ids"], p["chosen_ids"]) for p in PAIRS]
    sequences += [prompt_and_response(p["prompt_ids"], p["rejected_ids"]) for p in PAIRS]
    batch = PaddingFreeBatch.from_sequences(sequences)
    for half, expected in (
        (batch.select_sequences(0, 2), PaddingFreeBatch.from_sequences(sequences[:2])),
        (batch.select_sequences(2, 4), PaddingFreeBatch.from_sequences(sequences[2:])),
    ):
        for key in ("input_ids", "position_ids", "targets", "cu_seq_lens"):
            assert torch.equal(getattr(half, key), getattr(expected, key)), key
        assert half.max_length == expected.max_length
        assert half.model_inputs().keys() == expected.model_inputs().keys()


def test_precomputed_reference_columns_follow_the_rows_sequence_order():
    collator = WithReferenceLogProbs(PairwiseCollator(), ("ref_chosen_logps", "ref_rejected_logps"))
    assert collator(PAIRS).ref_log_probs is None
    features = [
        {**PAIRS[0], "ref_chosen_logps": -1.0, "ref_rejected_logps": -3.0},
        {**PAIRS[1], "ref_chosen_logps": -2.0, "ref_rejected_logps": -4.0},
    ]
    assert collator(features).ref_log_probs.tolist() == [-1.0, -2.0, -3.0, -4.0]


@pytest.fixture(scope="module")
def eager_model(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="eager")
    return model.eval()


def token_log_probs(model, prompt, response):
    ids = torch.tensor([[*prompt, *response]])
    logits = model(input_ids=ids).logits[0].log_softmax(-1)
    return [logits[len(prompt) - 1 + k, token].item() for k, token in enumerate(response)]


def test_ld_alpha_weights_tokens_beyond_the_shorter_response(eager_model):
    alpha = 0.25
    batch = PairwiseCollator()(PAIRS)
    with torch.no_grad():
        weighted, counts = sequence_log_probs(eager_model, batch, ld_alpha=alpha)
    sides = [(p["prompt_ids"], p["chosen_ids"]) for p in PAIRS]
    sides += [(p["prompt_ids"], p["rejected_ids"]) for p in PAIRS]
    shared = [2, 1, 2, 1]  # min(2, 3) for pair 0, min(4, 1) for pair 1
    for index, (prompt, response) in enumerate(sides):
        tokens = token_log_probs(eager_model, prompt, response)
        limit = shared[index]
        expected = sum(tokens[:limit]) + alpha * sum(tokens[limit:])
        assert weighted[index].item() == pytest.approx(expected, abs=1e-4)
    assert counts.tolist() == [2, 4, 3, 1]  # the weights never change the token counts
