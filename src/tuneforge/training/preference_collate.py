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
