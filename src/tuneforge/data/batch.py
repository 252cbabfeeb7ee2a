"""The padding-free batch: the one type every training batch has.

A batch is ONE row holding its sequences back to back (examples, the chosen and rejected sides
of preference pairs, KTO's mismatched pairs, PPO's rollouts), each with positions 0..n-1 and
its boundaries in `cu_seq_lens` (cumulative lengths from 0). Attention never crosses a boundary
(models/attention.py) and no compute is spent on padding. The targets are shifted within each
sequence once, when the batch is built: `targets[0, i]` is the token position i must predict,
IGNORE_INDEX where nothing is trained (context tokens, the last token of each sequence), so no
sequence ever predicts the next one's first token.

The collators build it (training/collate.py, training/preference_collate.py); the losses, the
trainers, the value head and the attention read it through the methods here, so "which sequence
owns each token" and "where does each sequence end" are answered in one place.

Room for what comes next: `extra_inputs` carries further model inputs (e.g. a vision model's
pixel values and image grid sizes) to forward as they are; token tensors are sliced along their
last dimension, so position ids with a leading axis (M-RoPE's [3, 1, tokens]) fit as they are.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch

from tuneforge.data.encode import IGNORE_INDEX

# The model-input names transformers gives the sequence boundaries of a packed row (read by
# FlashAttention's varlen kernels and by our own attention, models/attention.py).
BOUNDS_KEYS = ("cu_seq_lens_q", "cu_seq_lens_k")
MAX_LENGTH_KEYS = ("max_length_q", "max_length_k")

# transformers' Trainer looks a few entries of a batch up by name: the tokens it counts for
# `num_input_tokens_seen` and the targets it counts for `num_items_in_batch`.
_TRAINER_KEYS = {"input_ids": "input_ids", "labels": "targets", "shift_labels": "targets"}


@dataclasses.dataclass(frozen=True, eq=False)  # tensors have no one truth value
class PaddingFreeBatch:
    """One padding-free row of sequences, with what the stage needs beside it.

    Attributes:
        input_ids: [1, tokens].
        position_ids: [1, tokens] (or [axes, 1, tokens]), 0..n-1 within each sequence.
        targets: [1, tokens], the shifted labels: what each position predicts, or IGNORE_INDEX.
        cu_seq_lens: [sequences + 1] int32, the sequences' cumulative lengths from 0.
        max_length: the longest sequence's length (kept as an int: reading it from a GPU
            tensor would synchronise every forward).
        kto_tags: [examples] bool, KTO's desirable examples; stage data, never a model input.
        ref_log_probs: [sequences] precomputed reference log-probabilities (DPO/KTO).
        extra_inputs: further model inputs, passed to forward as they are.
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    targets: torch.Tensor
    cu_seq_lens: torch.Tensor
    max_length: int
    kto_tags: torch.Tensor | None = None
    ref_log_probs: torch.Tensor | None = None
    extra_inputs: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_sequences(cls, sequences: Sequence[tuple[list[int], list[int]]]) -> PaddingFreeBatch:
        """A batch of (input_ids, labels) pairs, the labels shifted within each sequence."""
        input_ids: list[int] = []
        targets: list[int] = []
        positions: list[int] = []
        for ids, labels in sequences:
            input_ids += ids
            targets += [*labels[1:], IGNORE_INDEX]
            positions += range(len(ids))
        lengths = [len(ids) for ids, _ in sequences]
        return cls(
            input_ids=torch.tensor([input_ids]),
            position_ids=torch.tensor([positions]),
            targets=torch.tensor([targets]),
            cu_seq_lens=torch.tensor([0, *lengths]).cumsum(0, dtype=torch.int32),
            max_length=max(lengths),
        )

    # --- the sequences ------------------------------------------------------------------

    @property
    def num_tokens(self) -> int:
        return self.input_ids.shape[-1]

    @property
    def num_sequences(self) -> int:
        return len(self.cu_seq_lens) - 1

    def sequence_lengths(self) -> torch.Tensor:
        """[sequences] token counts, long."""
        return self.cu_seq_lens.diff().long()

    def sequence_ends(self) -> torch.Tensor:
        """[sequences] the row index of each sequence's last token (where a value head reads
        the sequence's score: that position has read all of it)."""
        return self.cu_seq_lens[1:].long() - 1

    def token_owners(self) -> torch.Tensor:
        """[tokens] the index of the sequence each token of the row belongs to."""
        sequences = torch.arange(self.num_sequences, device=self.cu_seq_lens.device)
        return torch.repeat_interleave(sequences, self.sequence_lengths())

    def trained_positions(self) -> torch.Tensor:
        """[trained tokens] the row indices whose targets are trained, in row order."""
        return (self.targets[0] != IGNORE_INDEX).nonzero().flatten()

    # --- what the model sees ------------------------------------------------------------

    def model_inputs(self) -> dict[str, Any]:
        """The keyword arguments of the model's forward: tokens, positions, boundaries."""
        inputs: dict[str, Any] = {"input_ids": self.input_ids, "position_ids": self.position_ids}
        inputs |= dict.fromkeys(BOUNDS_KEYS, self.cu_seq_lens)
        inputs |= dict.fromkeys(MAX_LENGTH_KEYS, self.max_length)
        return inputs | self.extra_inputs

    # --- cutting the row ----------------------------------------------------------------

    def select_sequences(self, start: int, stop: int) -> PaddingFreeBatch:
        """Sequences [start, stop) as a batch of their own, for the model: the stage data
        (indexed by the whole batch's examples) stays behind."""
        if self.extra_inputs:
            # which extra input belongs to which sequence is the multimodal collator's to say
            raise ValueError("a batch with extra model inputs cannot be cut into sequences")
        bounds = self.cu_seq_lens[start : stop + 1]
        first, last = int(bounds[0]), int(bounds[-1])
        bounds = bounds - first
        return PaddingFreeBatch(
            input_ids=self.input_ids[..., first:last],
            position_ids=self.position_ids[..., first:last],
            targets=self.targets[..., first:last],
            cu_seq_lens=bounds,
            max_length=int(bounds.diff().max()),
        )

    def passes(self, max_tokens: int) -> list[PaddingFreeBatch]:
        """The row cut into consecutive batches of whole sequences of at most `max_tokens`
        tokens each (a longer sequence is a batch of its own)."""
        bounds = self.cu_seq_lens.tolist()
        groups: list[list[int]] = [[0]]  # sequence indices where each pass starts (and ends)
        for index in range(1, len(bounds)):
            start = groups[-1][0]
            if bounds[index] - bounds[start] > max_tokens and index - 1 > start:
                groups[-1].append(index - 1)
                groups.append([index - 1])
        groups[-1].append(self.num_sequences)
        return [self.select_sequences(start, stop) for start, stop in groups]

    # --- moving it ----------------------------------------------------------------------

    def to(self, device: Any, non_blocking: bool = False) -> PaddingFreeBatch:
        """The batch on `device` (accelerate's data loader and our Trainer call this)."""
        return self._map(lambda tensor: tensor.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> PaddingFreeBatch:
        """Page-locked copies, for the data loader's `pin_memory` (fast host-to-GPU copies)."""
        return self._map(lambda tensor: tensor.pin_memory())

    def _map(self, move: Any) -> PaddingFreeBatch:
        changes: dict[str, Any] = {
            field.name: move(value)
            for field in dataclasses.fields(self)
            if isinstance(value := getattr(self, field.name), torch.Tensor)
        }
        changes["extra_inputs"] = {name: move(t) for name, t in self.extra_inputs.items()}
        return dataclasses.replace(self, **changes)

    # --- what transformers' Trainer reads by name ---------------------------------------

    def __contains__(self, key: object) -> bool:
        return key in _TRAINER_KEYS

    def __getitem__(self, key: str) -> torch.Tensor:
        return getattr(self, _TRAINER_KEYS[key])


def sequence_bounds(model_kwargs: dict[str, Any], length: int) -> list[int] | None:
    """The sequence boundaries of a packed row, as attention sees them in its keyword
    arguments: from `cu_seq_lens_q`, else from position ids restarting at 0 (a caller that
    packs without boundaries); None when the row holds a single sequence."""
    bounds = model_kwargs.get(BOUNDS_KEYS[0])
    if bounds is None:
        positions = model_kwargs.get("position_ids")
        if positions is None or positions.shape[0] != 1:
            return None
        starts = (positions[0] == 0).nonzero().flatten().tolist()
        return [*starts, length] if len(starts) > 1 else None
    bounds = bounds.tolist() if torch.is_tensor(bounds) else list(bounds)
    return bounds if len(bounds) > 2 else None
