"""Padding-free batches of preference pairs.

A pairwise example is stored once as prompt, chosen and rejected token ids (data/encode.py).
The collator turns a micro-batch of n pairs into ONE padding-free row of 2n sequences
(data/batch.py): every `prompt + chosen` first, then every `prompt + rejected`, so a single
forward scores both sides with attention isolated per sequence and no pad compute. Only
response tokens are targets. Sequence i and i + n are the two sides of pair i.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from tuneforge.data.batch import PaddingFreeBatch
from tuneforge.data.encode import IGNORE_INDEX


def prompt_and_response(prompt: list[int], response: list[int]) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of one sequence: the prompt is context, the response is trained."""
    return [*prompt, *response], [IGNORE_INDEX] * len(prompt) + list(response)


@dataclass(frozen=True)
class PairwiseCollator:
    """{prompt_ids, chosen_ids, rejected_ids} features -> one row: chosen sides, then rejected."""

    def __call__(self, features: list[dict[str, Any]]) -> PaddingFreeBatch:
        chosen = [prompt_and_response(f["prompt_ids"], f["chosen_ids"]) for f in features]
        rejected = [prompt_and_response(f["prompt_ids"], f["rejected_ids"]) for f in features]
        return PaddingFreeBatch.from_sequences(chosen + rejected)


# --- KTO, precomputed reference log-probabilities ---------------------------------------


def with_kl_responses(dataset: Any, cutoff_len: int) -> Any:
    """Adds `kl_response_ids`: each example's prompt is paired with the previous example's
    response (the first with the last), LLaMA-Factory's +1 offset over the dataset rather than
    within a micro-batch, so that a batch of one still gets a mismatched pair. The borrowed
    response is cut to fit cutoff_len after its new prompt."""
    prompts = list(dataset["prompt_ids"])
    responses = list(dataset["response_ids"])
    borrowed = [
        responses[index - 1][: max(cutoff_len - len(prompt), 1)]
        for index, prompt in enumerate(prompts)
    ]
    return dataset.add_column("kl_response_ids", borrowed)


@dataclass(frozen=True)
class KTOCollator:
    """{prompt_ids, response_ids, kl_response_ids, kto_tag} features -> one row of 2n sequences:
    the n examples, then their n mismatched (prompt, borrowed response) pairs for KTO's KL
    estimate; `kto_tags` [n] says which examples are desirable."""

    def __call__(self, features: list[dict[str, Any]]) -> PaddingFreeBatch:
        examples = [prompt_and_response(f["prompt_ids"], f["response_ids"]) for f in features]
        mismatched = [prompt_and_response(f["prompt_ids"], f["kl_response_ids"]) for f in features]
        batch = PaddingFreeBatch.from_sequences(examples + mismatched)
        tags = torch.tensor([bool(f["kto_tag"]) for f in features])
        return dataclasses.replace(batch, kto_tags=tags)


@dataclass(frozen=True)
class WithReferenceLogProbs:
    """Wraps a collator of 2n-sequence rows: when the dataset carries precomputed reference
    log-probabilities in `columns` (first half, second half), adds them as `ref_log_probs` [2n],
    in the row's sequence order."""

    collator: Callable[[list[dict[str, Any]]], PaddingFreeBatch]
    columns: tuple[str, str]

    def __call__(self, features: list[dict[str, Any]]) -> PaddingFreeBatch:
        batch = self.collator(features)
        if self.columns[0] in features[0]:
            values = [f[column] for column in self.columns for f in features]
            batch = dataclasses.replace(
                batch, ref_log_probs=torch.tensor(values, dtype=torch.float32)
            )
        return batch
