"""The language-modelling loss, as a function of a model and a padding-free batch.

Logits are computed only where a token is trained (`logits_to_keep`): the vocabulary
projection is the largest single matmul of a small model and the largest activation of any
model, and most prompt positions never need it. In training, the projection and the loss are
fused (`training/linear_cross_entropy.py`) so that not even those logits are kept. The loss
is a sum over trained tokens divided by the number of trained tokens of the whole
(accumulated, all-device) batch, so gradient accumulation and data parallelism give the
gradient of one big batch.

Mixture-of-experts models whose config has `output_router_logits` on (models/loader.py turns
it on for training when `moe_aux_loss_coef` is set) return their router's load-balancing loss
as `aux_loss`, computed in their forward over every token of the row: a padding-free row has
no padding, so no attention mask is needed to leave any out. transformers adds
`coefficient * aux_loss` only to a loss it computes from labels, which it never does here, so
`language_model_loss` adds it. It enters with the weight of this batch's share of the trained
tokens (`trained / num_items_in_batch`), the same scale as the token loss: summed over the
passes, accumulated micro-batches and devices of one optimizer step, the router term is
`coefficient` times the trained-token-weighted mean of the micro-batches' router losses.
Without gradient accumulation on one device that is exactly LLaMA-Factory's
`loss + coefficient * aux_loss`, and it does not grow with the number of micro-batches.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from tuneforge.data.batch import PaddingFreeBatch
from tuneforge.models.loader import ROUTER_COEFFICIENTS
from tuneforge.training.linear_cross_entropy import (
    fused_output_layer,
    linear_cross_entropy,
    output_layer_inputs,
)
from tuneforge.training.preference_losses import ld_weights


@dataclass(frozen=True)
class LanguageModelLoss:
    """One batch's training loss and its parts."""

    loss: torch.Tensor  # what backward runs on: token loss plus the weighted router loss
    trained_tokens: int
    router_loss: torch.Tensor | None = None  # the model's unweighted aux_loss; None if dense
    predictions: torch.Tensor | None = None  # argmax at the trained positions, when asked


def token_losses(
    model: Any, batch: PaddingFreeBatch, with_predictions: bool = False
) -> tuple[torch.Tensor, ...]:
    """Per-token cross-entropy at trained positions and those positions' indices (and the
    argmax predictions there, for accuracy)."""
    keep = batch.trained_positions()
    losses, logits, _ = _forward_through_logits(model, batch, keep)
    if with_predictions:
        return losses, keep, logits.argmax(-1)
    return losses, keep


def _forward_through_logits(
    model: Any, batch: PaddingFreeBatch, keep: torch.Tensor, label_smoothing: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor, Any]:
    outputs = model(**batch.model_inputs(), logits_to_keep=keep, use_cache=False)
    logits = outputs.logits[0]
    targets = batch.targets[0, keep]
    losses = F.cross_entropy(
        logits.float(), targets, reduction="none", label_smoothing=label_smoothing
    )
    return losses, logits, outputs


def language_model_loss(
    model: Any, batch: PaddingFreeBatch, num_items_in_batch: torch.Tensor | int | None = None
) -> tuple[torch.Tensor, int]:
    """Summed token loss over `num_items_in_batch` (default: this batch's trained tokens),
    plus an MoE model's weighted router loss (see the module docstring)."""
    terms = language_model_loss_terms(model, batch, num_items_in_batch)
    return terms.loss, terms.trained_tokens


def language_model_loss_terms(
    model: Any,
    batch: PaddingFreeBatch,
    num_items_in_batch: torch.Tensor | int | None = None,
    with_predictions: bool = False,
    label_smoothing: float = 0.0,
) -> LanguageModelLoss:
    """`language_model_loss`, with the router loss kept apart as well (for the logs), and the
    predictions at trained positions with `with_predictions` (for accuracy). A
    `label_smoothing` (transformers' `label_smoothing_factor`) mixes that much of a uniform
    distribution into each target, as transformers' label smoother does."""
    keep = batch.trained_positions()
    denominator = num_items_in_batch if num_items_in_batch is not None else max(keep.numel(), 1)
    inputs = batch.model_inputs()
    fusable = torch.is_grad_enabled() and not with_predictions
    head = fused_output_layer(model, inputs, keep) if fusable else None
    predictions = None
    if head is None:
        losses, logits, outputs = _forward_through_logits(model, batch, keep, label_smoothing)
        loss = losses.sum() / denominator
        predictions = logits.argmax(-1) if with_predictions else None
    else:
        # the output layer gets an empty slice; the router loss is still in the output
        with output_layer_inputs(model) as captured:
            outputs = model(**inputs, logits_to_keep=keep, use_cache=False)
        hidden = captured[0].reshape(-1, captured[0].shape[-1])
        targets = batch.targets[0, keep]
        loss = linear_cross_entropy(
            hidden, head.weight, head.bias, targets, 1.0 / denominator, label_smoothing
        )
    router_loss = getattr(outputs, "aux_loss", None)
    if not torch.is_tensor(router_loss):  # dense, or router logits off (transformers gives 0)
        return LanguageModelLoss(loss, keep.numel(), None, predictions)
    coefficient = router_loss_coefficient(model)
    if coefficient:
        share = keep.numel() / denominator  # this batch's part of the step's trained tokens
        loss = loss + coefficient * share * router_loss.to(loss.device)
    return LanguageModelLoss(loss, keep.numel(), router_loss.detach(), predictions)


def router_loss_coefficient(model: Any) -> float | None:
    """The weight of an MoE model's router load-balancing loss when its forward computes that
    loss (`output_router_logits` on in its config or text config), else None.

    The model's own attribute comes first: transformers' MoE models copy the coefficient
    there when they are built (DBRX from `ffn_config.moe_loss_weight`)."""
    inner = getattr(model, "module", model)  # a DDP wrapper has no config
    config = getattr(inner, "config", None)
    configs = [c for c in (config, getattr(config, "text_config", None)) if c is not None]
    if not any(getattr(c, "output_router_logits", False) is True for c in configs):
        return None
    for holder in (inner, *configs):
        for name in ROUTER_COEFFICIENTS:
            value = getattr(holder, name, None)
            if isinstance(value, int | float) and not isinstance(value, bool):
                return float(value)
    return None


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
