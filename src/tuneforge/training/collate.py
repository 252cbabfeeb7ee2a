"""Collating language-model examples into padding-free batches, and packing.

A batch is ONE row of its examples back to back (data/batch.py: PaddingFreeBatch), so attention
never crosses examples and no compute is spent on padding.

Packing (`packing: true`) only changes what one dataset row holds: several examples, filled
into bins of at most cutoff_len tokens, with their lengths in a `lengths` column. The collator
treats a row with lengths exactly like a batch of those examples.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tuneforge.data.batch import PaddingFreeBatch


@dataclass(frozen=True)
class PaddingFreeCollator:
    """Collates encoded examples ({input_ids, labels?, lengths?}) into one packed row."""

    def __call__(self, features: list[dict[str, Any]]) -> PaddingFreeBatch:
        sequences: list[tuple[list[int], list[int]]] = []
        for feature in features:
            ids = list(feature["input_ids"])
            labels = list(feature["labels"]) if "labels" in feature else ids  # pretraining
            start = 0
            for length in feature.get("lengths") or [len(ids)]:
                sequences.append((ids[start : start + length], labels[start : start + length]))
                start += length
        return PaddingFreeBatch.from_sequences(sequences)


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
