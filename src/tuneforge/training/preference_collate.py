"""Padding-free batches of preference pairs.

A pairwise example is stored once as prompt, chosen and rejected token ids (data/encode.py).
The collator turns a micro-batch of n pairs into ONE padding-free row of 2n sequences: every
`prompt + chosen` first, then every `prompt + rejected`, so a single forward scores both sides
with attention isolated per sequence and no pad compute. Only response tokens are targets.
Sequence i and i + n are the two sides of pair i.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from tuneforge.data.encode import IGNORE_INDEX
from tuneforge.training.collate import padding_free_row


def prompt_and_response(prompt: list[int], response: list[int]) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of one sequence: the prompt is context, the response is trained."""
    return [*prompt, *response], [IGNORE_INDEX] * len(prompt) + list(response)


@dataclass(frozen=True)
class PairwiseCollator:
    """{prompt_ids, chosen_ids, rejected_ids} features -> one row: chosen sides, then rejected."""

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        chosen = [prompt_and_response(f["prompt_ids"], f["chosen_ids"]) for f in features]
        rejected = [prompt_and_response(f["prompt_ids"], f["rejected_ids"]) for f in features]
        return padding_free_row(chosen + rejected)


def sequence_ends(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Index in the row of each sequence's last token (where a reward head reads its score)."""
    return batch["cu_seq_lens_q"][1:].long() - 1


def sequence_of_positions(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """For every position of the row, the index of the sequence it belongs to."""
    lengths = batch["cu_seq_lens_q"].diff().long()
    return torch.repeat_interleave(torch.arange(len(lengths)), lengths)


# --- KTO, precomputed reference log-probabilities, splitting a row -------------------------

# The keys of a padding-free row (training/collate.py); anything else in a batch is not for
# the model.
ROW_KEYS = (
    "input_ids",
    "position_ids",
    "labels",
    "shift_labels",
    "cu_seq_lens_q",
    "cu_seq_lens_k",
    "max_length_q",
    "max_length_k",
)
_TOKEN_KEYS = ("input_ids", "position_ids", "labels", "shift_labels")


def model_row(batch: dict[str, Any]) -> dict[str, Any]:
    """The padding-free row of a batch, without the stage's extra keys (tags, reference
    log-probabilities)."""
    return {key: batch[key] for key in ROW_KEYS}


def split_row(batch: dict[str, Any], count: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """A row's first `count` sequences and the rest, as two padding-free rows."""
    row = model_row(batch)
    bounds = row["cu_seq_lens_q"]
    cut = int(bounds[count])
    head_bounds, tail_bounds = bounds[: count + 1], bounds[count:] - cut
    halves = []
    for part, part_bounds in ((slice(0, cut), head_bounds), (slice(cut, None), tail_bounds)):
        half = {key: row[key][:, part] for key in _TOKEN_KEYS}
        longest = int(part_bounds.diff().max())
        half |= {"cu_seq_lens_q": part_bounds, "cu_seq_lens_k": part_bounds}
        half |= {"max_length_q": longest, "max_length_k": longest}
        halves.append(half)
    return halves[0], halves[1]


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

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        examples = [prompt_and_response(f["prompt_ids"], f["response_ids"]) for f in features]
        mismatched = [prompt_and_response(f["prompt_ids"], f["kl_response_ids"]) for f in features]
        batch = padding_free_row(examples + mismatched)
        batch["kto_tags"] = torch.tensor([bool(f["kto_tag"]) for f in features])
        return batch


@dataclass(frozen=True)
class WithReferenceLogProbs:
    """Wraps a collator of 2n-sequence rows: when the dataset carries precomputed reference
    log-probabilities in `columns` (first half, second half), adds them as `ref_log_probs` [2n],
    in the row's sequence order."""

    collator: Any
    columns: tuple[str, str]

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = self.collator(features)
        if self.columns[0] in features[0]:
            values = [f[column] for column in self.columns for f in features]
            batch["ref_log_probs"] = torch.tensor(values, dtype=torch.float32)
        return batch
