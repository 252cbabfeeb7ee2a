"""Sampling, mixing and splitting lists of examples, deterministically from a seed.

Mix strategies keep LLaMA-Factory's meanings: `concat` appends datasets in order;
`interleave_under` draws from the datasets (round-robin, or at random by `interleave_probs`)
until the first one runs out; `interleave_over` goes on until every one has been used up,
starting exhausted ones over again (oversampling the small ones).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import TypeVar

from tuneforge.errors import ConfigError

T = TypeVar("T")


def resample(items: list[T], target: int, seed: int) -> list[T]:
    """`target` items: a random subset when fewer are asked for, whole repeats plus a random
    remainder when more are (a catalogue entry's `num_samples`)."""
    rng = random.Random(seed)
    repeats, remainder = divmod(target, len(items)) if items else (0, 0)
    return items * repeats + rng.sample(items, remainder)


def mix(
    datasets: Sequence[list[T]],
    strategy: str,
    probs: Sequence[float] | None,
    seed: int,
) -> list[T]:
    """Mixes several datasets into one list."""
    if len(datasets) == 1 or strategy == "concat":
        return [item for dataset in datasets for item in dataset]
    if strategy not in ("interleave_under", "interleave_over"):
        raise ConfigError(
            f"config key `mix_strategy`: got {strategy!r}, expected one of "
            "'concat', 'interleave_under', 'interleave_over'."
        )
    if probs is not None and len(probs) != len(datasets):
        raise ConfigError(
            f"config key `interleave_probs`: {len(probs)} probabilities for {len(datasets)} "
            "datasets; give one per dataset."
        )
    return _interleave(datasets, probs, seed, until_all=strategy == "interleave_over")


def _interleave(
    datasets: Sequence[list[T]], probs: Sequence[float] | None, seed: int, until_all: bool
) -> list[T]:
    rng = random.Random(seed)
    positions = [0] * len(datasets)
    exhausted = [not dataset for dataset in datasets]
    mixed: list[T] = []
    turn = 0
    while not (all(exhausted) if until_all else any(exhausted)):
        if probs is None:
            index, turn = turn % len(datasets), turn + 1
        else:
            index = rng.choices(range(len(datasets)), weights=probs)[0]
        dataset = datasets[index]
        mixed.append(dataset[positions[index] % len(dataset)])
        positions[index] += 1
        if positions[index] >= len(dataset):
            exhausted[index] = True
    return mixed


def split(items: list[T], val_size: float, seed: int) -> tuple[list[T], list[T]]:
    """Shuffles and splits off a validation set: `val_size` < 1 is a fraction, >= 1 a count."""
    if val_size <= 0:
        return items, []
    count = round(len(items) * val_size) if val_size < 1 else int(val_size)
    if not 0 < count < len(items):
        raise ConfigError(
            f"config key `val_size`: {val_size} leaves no examples for "
            f"{'validation' if count <= 0 else 'training'} out of {len(items)}; "
            "use a fraction in (0, 1) or a smaller count."
        )
    shuffled = list(items)
    random.Random(seed).shuffle(shuffled)
    return shuffled[count:], shuffled[:count]
