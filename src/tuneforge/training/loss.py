"""The language-modelling loss, as a function of a model and a padding-free batch.

Logits are computed only where a token is trained (`logits_to_keep`): the vocabulary
projection is the largest single matmul of a small model and the largest activation of any
model, and most prompt positions never need it. In training, the projection and the loss are
fused (`training/linear_cross_entropy.py`) so that not even those logits are kept. The loss
is a sum over trained tokens divided by the number of trained tokens of the whole
(accumulated, all-device) batch, so gradient accumulation and data parallelism give the
gradient of one big batch.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from tuneforge.data.encode import IGNORE_INDEX
from tuneforge.training.linear_cross_entropy import (
    fused_output_layer,
    linear_cross_entropy,
    output_layer_inputs,
)

BATCH_ONLY_KEYS = ("labels", "shift_labels")


def _model_inputs_and_targets(batch: dict[str, Any]) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """The model's inputs, the row's targets and the trained positions' indices."""
    targets = batch["shift_labels"][0]
    keep = (targets != IGNORE_INDEX).nonzero().flatten()
    inputs = {k: v for k, v in batch.items() if k not in BATCH_ONLY_KEYS}
    return inputs, targets, keep


def token_losses(model: Any, batch: dict[str, Any], with_predictions: bool = False) -> tuple:
    """Per-token cross-entropy at trained positions and those positions' indices (and the
    argmax predictions there, for accuracy)."""
    inputs, targets, keep = _model_inputs_and_targets(batch)
    losses, logits = _losses_through_logits(model, inputs, targets, keep)
    if with_predictions:
        return losses, keep, logits.argmax(-1)
    return losses, keep


def _losses_through_logits(model: Any, inputs: dict, targets: torch.Tensor, keep: torch.Tensor):
    logits = model(**inputs, logits_to_keep=keep, use_cache=False).logits[0]
    return F.cross_entropy(logits.float(), targets[keep], reduction="none"), logits


def language_model_loss(
    model: Any, batch: dict[str, Any], num_items_in_batch: torch.Tensor | int | None = None
) -> tuple[torch.Tensor, int]:
    """Summed token loss over `num_items_in_batch` (default: this batch's trained tokens)."""
    inputs, targets, keep = _model_inputs_and_targets(batch)
    denominator = num_items_in_batch if num_items_in_batch is not None else max(keep.numel(), 1)
    head = fused_output_layer(model, inputs, keep) if torch.is_grad_enabled() else None
    if head is None:
        losses, _ = _losses_through_logits(model, inputs, targets, keep)
        return losses.sum() / denominator, keep.numel()
    with output_layer_inputs(model) as captured:
        model(**inputs, logits_to_keep=keep, use_cache=False)
    hidden = captured[0].reshape(-1, captured[0].shape[-1])
    loss = linear_cross_entropy(hidden, head.weight, head.bias, targets[keep], 1.0 / denominator)
    return loss, keep.numel()


def sequence_log_probs(model: Any, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probability of each sequence's trained tokens, and their counts.

    For a padding-free row of several sequences (e.g. a PairwiseCollator batch): returns
    (log_probs [num_sequences], token_counts [num_sequences]). Logits are computed at trained
    positions only.
    """
    losses, keep = token_losses(model, batch)
    lengths = batch["cu_seq_lens_q"].diff().long()
    owner = torch.repeat_interleave(torch.arange(len(lengths), device=keep.device), lengths)[keep]
    log_probs = torch.zeros(len(lengths), dtype=losses.dtype, device=losses.device)
    log_probs = log_probs.index_add(0, owner, -losses)
    counts = torch.bincount(owner, minlength=len(lengths))
    return log_probs, counts
