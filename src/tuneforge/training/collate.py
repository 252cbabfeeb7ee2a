"""Padding-free batches and packing.

A batch is ONE row: its examples back to back, each with positions 0..n-1 and its boundaries
in `cu_seq_lens_*`, so attention never crosses examples (see models/attention.py) and no
compute is spent on padding. The loss targets are shifted within each example here, once:
`shift_labels[i]` is the token position i must predict, -100 where nothing is trained (prompt
tokens, the last token of each example).

Packing (`packing: true`) only changes what one dataset row holds: several examples, filled
into bins of at most cutoff_len tokens, with their lengths in a `lengths` column. The collator
treats a row with lengths exactly like a batch of those examples.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from tuneforge.data.encode import IGNORE_INDEX


def padding_free_row(sequences: list[tuple[list[int], list[int]]]) -> dict[str, Any]:
    """One padding-free row from (input_ids, labels) pairs, labels shifted within each one."""
    input_ids: list[int] = []
    targets: list[int] = []
    positions: list[int] = []
    for ids, labels in sequences:
        input_ids += ids
        targets += [*labels[1:], IGNORE_INDEX]
        positions += range(len(ids))
    lengths = [len(ids) for ids, _ in sequences]
    cu_seq_lens = torch.tensor([0, *lengths]).cumsum(0, dtype=torch.int32)
    shift_labels = torch.tensor([targets])
    longest = max(lengths)
    return {
        "input_ids": torch.tensor([input_ids]),
        "position_ids": torch.tensor([positions]),
        # `labels` is what the Trainer looks for; both hold the already-shifted targets
        "labels": shift_labels,
        "shift_labels": shift_labels,
        "cu_seq_lens_q": cu_seq_lens,
        "cu_seq_lens_k": cu_seq_lens,
        "max_length_q": longest,
        "max_length_k": longest,
    }


@dataclass(frozen=True)
class PaddingFreeCollator:
    """Collates encoded examples ({input_ids, labels?, lengths?}) into one packed row."""

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        sequences: list[tuple[list[int], list[int]]] = []
        for feature in features:
            ids = list(feature["input_ids"])
            labels = list(feature["labels"]) if "labels" in feature else ids  # pretraining
            start = 0
            for length in feature.get("lengths") or [len(ids)]:
                sequences.append((ids[start : start + length], labels[start : start + length]))
                start += length
        return padding_free_row(sequences)


def pack(lengths: list[int], capacity: int) -> list[list[int]]:
    """Groups example indices into bins of at most `capacity` tokens (first-fit decreasing:
    few bins, deterministic). Bins keep their examples in dataset order."""
    bins: list[list[int]] = []
    room: list[int] = []
    for index in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        size = lengths[index]
        for slot, free in enumerate(room):
            if size <= free:
                bins[slot].append(index)
                room[slot] -= size
                break
        else:
            bins.append([index])
            room.append(capacity - size)
    return [sorted(members) for members in bins]


def pack_dataset(dataset: Any, capacity: int) -> Any:
    """A dataset whose rows are bins of `dataset`'s examples, with a `lengths` column."""
    import datasets

    columns = [name for name in ("input_ids", "labels") if name in dataset.column_names]
    values = {name: dataset[name] for name in columns}
    lengths = [len(ids) for ids in values["input_ids"]]
    rows: dict[str, list[Any]] = {name: [] for name in [*columns, "lengths"]}
    for members in pack(lengths, capacity):
        for name in columns:
            rows[name].append([token for i in members for token in values[name][i]])
        rows["lengths"].append([lengths[i] for i in members])
    return datasets.Dataset.from_dict(rows)


def split_row(batch: dict[str, Any], max_tokens: int) -> list[dict[str, Any]]:
    """A padding-free row cut into consecutive rows of whole examples, each of at most
    `max_tokens` tokens (an example longer than that is a row of its own)."""
    bounds = batch["cu_seq_lens_q"].tolist()
    groups: list[list[int]] = [[0]]
    for end in bounds[1:]:
        if end - groups[-1][0] > max_tokens and groups[-1][-1] != groups[-1][0]:
            groups.append([groups[-1][-1]])
        groups[-1].append(end)
    rows = []
    for group in groups:
        start, stop = group[0], group[-1]
        cu_seq_lens = torch.tensor([end - start for end in group], dtype=torch.int32)
        longest = int(cu_seq_lens.diff().max())
        row = {
            name: value[:, start:stop]
            for name, value in batch.items()
            if isinstance(value, torch.Tensor) and value.dim() == 2
        }
        row.update(
            cu_seq_lens_q=cu_seq_lens,
            cu_seq_lens_k=cu_seq_lens,
            max_length_q=longest,
            max_length_k=longest,
        )
        rows.append(row)
    return rows
