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

from tuneforge.data.batch import PaddingFreeBatch
from tuneforge.training.linear_cross_entropy import (
    fused_output_layer,
    linear_cross_entropy,
    output_layer_inputs,
)
from tuneforge.training.preference_losses import ld_weights


def token_losses(
    model: Any, batch: PaddingFreeBatch, with_predictions: bool = False
) -> tuple[torch.Tensor, ...]:
    """Per-token cross-entropy at trained positions and those positions' indices (and the
    argmax predictions there, for accuracy)."""
    keep = batch.trained_positions()
    losses, logits = _losses_through_logits(model, batch, keep)
    if with_predictions:
        return losses, keep, logits.argmax(-1)
    return losses, keep


def _losses_through_logits(
    model: Any, batch: PaddingFreeBatch, keep: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    logits = model(**batch.model_inputs(), logits_to_keep=keep, use_cache=False).logits[0]
    return F.cross_entropy(logits.float(), batch.targets[0, keep], reduction="none"), logits


def language_model_loss(
    model: Any, batch: PaddingFreeBatch, num_items_in_batch: torch.Tensor | int | None = None
) -> tuple[torch.Tensor, int]:
    """Summed token loss over `num_items_in_batch` (default: this batch's trained tokens)."""
    keep = batch.trained_positions()
    denominator = num_items_in_batch if num_items_in_batch is not None else max(keep.numel(), 1)
    inputs = batch.model_inputs()
    head = fused_output_layer(model, inputs, keep) if torch.is_grad_enabled() else None
    if head is None:
        losses, _ = _losses_through_logits(model, batch, keep)
        return losses.sum() / denominator, keep.numel()
    with output_layer_inputs(model) as captured:
        model(**inputs, logits_to_keep=keep, use_cache=False)
    hidden = captured[0].reshape(-1, captured[0].shape[-1])
    targets = batch.targets[0, keep]
    loss = linear_cross_entropy(hidden, head.weight, head.bias, targets, 1.0 / denominator)
    return loss, keep.numel()


def sequence_log_probs(
    model: Any, batch: PaddingFreeBatch, ld_alpha: float | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probability of each sequence's trained tokens, and their counts.

    Args:
        model: scores the row (logits only at trained positions).
        batch: a padding-free row of several sequences (e.g. a PairwiseCollator batch).
        ld_alpha: LD-DPO's weight of the tokens beyond the shorter response of each pair
            (see preference_losses.ld_weights); None weighs every token 1.

    Returns:
        (log_probs [sequences], token_counts [sequences]).
    """
    losses, keep = token_losses(model, batch)
    owner = batch.token_owners()[keep]
    count = batch.num_sequences
    token_log_probs = -losses
    if ld_alpha is not None:
        token_log_probs = token_log_probs * ld_weights(owner, count, ld_alpha)
    log_probs = token_log_probs.new_zeros(count).index_add(0, owner, token_log_probs)
    return log_probs, torch.bincount(owner, minlength=count)
