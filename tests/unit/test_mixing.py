"""Mixing strategies, sampling and splits: LLaMA-Factory's meanings, seed-deterministic."""

from __future__ import annotations

import pytest

from tuneforge.data.mixing import mix, resample, split
from tuneforge.errors import ConfigError

A = [f"a{i}" for i in range(4)]
B = [f"b{i}" for i in range(2)]


def test_concat_keeps_order():
    assert mix([A, B], "concat", None, seed=0) == A + B


def test_interleave_under_stops_when_the_first_runs_out():
    assert mix([A, B], "interleave_under", None, seed=0) == ["a0", "b0", "a1", "b1"]


def test_interleave_over_oversamples_until_all_are_used():
    mixed = mix([A, B], "interleave_over", None, seed=0)
    assert mixed == ["a0", "b0", "a1", "b1", "a2", "b0", "a3"]
    assert set(A) <= set(mixed) and set(B) <= set(mixed)


def test_interleave_with_probabilities_is_seeded():
    first = mix([A * 50, B * 50], "interleave_under", [0.8, 0.2], seed=3)
    assert first == mix([A * 50, B * 50], "interleave_under", [0.8, 0.2], seed=3)
    assert first != mix([A * 50, B * 50], "interleave_under", [0.8, 0.2], seed=4)
    share = sum(item.startswith("a") for item in first) / len(first)
    assert 0.7 < share < 0.9


def test_resample_down_and_up():
    down = resample(A, 2, seed=0)
    assert len(down) == 2 and set(down) <= set(A)
    up = resample(B, 5, seed=0)
    assert len(up) == 5 and up[:4] == B + B


def test_split_by_fraction_and_count_is_deterministic():
    items = list(range(100))
    train, val = split(items, 0.1, seed=42)
    assert len(val) == 10 and len(train) == 90 and sorted(train + val) == items
    assert split(items, 0.1, seed=42) == (train, val)
    train, val = split(items, 7, seed=42)
    assert len(val) == 7
    with pytest.raises(ConfigError, match="leaves no examples"):
        split(items, 100, seed=0)
