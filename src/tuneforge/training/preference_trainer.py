"""Trainers of the preference stages: DPO (and its family: ipo, hinge, orpo, simpo) and KTO.

Both subclass tuneforge's Trainer and differ only in their loss step. A batch is one
padding-free row (data/batch.py, built by training/preference_collate.py): DPO's n chosen then
n rejected sequences, KTO's n examples then their n mismatched pairs. The policy scores it in
one forward (KTO's mismatched pairs in a second one, without gradients); the reference scores
the whole row in one forward, or not at all when its log-probabilities were precomputed into
the dataset.

Metrics (rewards/chosen, rewards/rejected, rewards/accuracies, rewards/margins, logps/chosen,
logps/rejected, KTO's kl) are per-example values, logged and evaluated as means by the base
Trainer.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from tuneforge.data.batch import PaddingFreeBatch
from tuneforge.training.loss import sequence_log_probs
from tuneforge.training.preference_collate import WithReferenceLogProbs
from tuneforge.training.preference_losses import (
    AVERAGED,
    DPOOptions,
    dpo_loss,
    kto_kl,
    kto_loss,
    sft_term,
)
from tuneforge.training.reference import Reference, scoring, scoring_as_reference
from tuneforge.training.trainer import Metrics, Trainer

logger = logging.getLogger("tuneforge")


class PreferenceTrainer(Trainer):
    """What DPO and KTO share: the reference, precomputed reference log-probabilities, metric
    logging, evaluation. Subclasses define `loss_and_metrics`."""

    # compute_loss returns a mean over the micro-batch's examples: the Trainer divides by the
    # accumulation steps, and DDP averages the gradients
    loss_is_scaled_for_ga = False
    metric_names: tuple[str, ...] = ()
    reference_columns: tuple[str, str] = ("", "")

    def __init__(
        self, *args: Any, data_collator: Any, reference: Reference | None = None, **kwargs: Any
    ):
        collator = WithReferenceLogProbs(data_collator, self.reference_columns)
        super().__init__(*args, data_collator=collator, **kwargs)
        self.reference = reference
        self.ld_alpha: float | None = None
        self._precomputed = False
        disable_dropout(self.model)
        if reference is not None and reference.model is not None:
            if not getattr(reference.model, "is_quantized", False):
                reference.model.to(self.args.device)
            disable_dropout(reference.model)

    def precompute_reference(self) -> None:
        """Scores the train and eval sets with the reference once, as dataset columns, so that
        training runs no reference forward; a separate reference model is then released."""
        reference = self.reference
        if reference is None:
            return
        self.train_dataset = self._with_reference_columns(self.train_dataset, "train", reference)
        self.eval_dataset = self._with_reference_columns(self.eval_dataset, "eval", reference)
        self.reference = Reference()
        self._precomputed = True

    def _with_reference_columns(self, dataset: Any, split: str, reference: Reference) -> Any:
        if dataset is None:
            return None
        if isinstance(dataset, dict):
            return {
                name: self._with_reference_columns(part, name, reference)
                for name, part in dataset.items()
            }
        from torch.utils.data import DataLoader

        loader = DataLoader(
            dataset, batch_size=self.args.per_device_eval_batch_size, collate_fn=self.data_collator
        )
        columns: tuple[list[float], list[float]] = ([], [])
        policy = self.accelerator.unwrap_model(self.model)
        for batch in loader:
            row = self._prepare_inputs(batch)
            with scoring_as_reference(reference, policy) as scorer:
                first, second = sequence_log_probs(scorer, row, self.ld_alpha)[0].chunk(2)
            columns[0].extend(first.tolist())
            columns[1].extend(second.tolist())
        logger.info(
            "Reference log-probabilities of %d %s examples precomputed.", len(dataset), split
        )
        for name, values in zip(self.reference_columns, columns):
            dataset = dataset.add_column(name, values)
        return dataset

    def reference_log_probs(self, model: Any, batch: PaddingFreeBatch) -> torch.Tensor | None:
        """The reference's log-probabilities of every sequence of the batch's row."""
        if self.reference is None:
            return None
        if batch.ref_log_probs is not None:
            return batch.ref_log_probs
        if self._precomputed:
            raise RuntimeError("reference log-probabilities were precomputed but are missing")
        policy = self.accelerator.unwrap_model(model)
        with scoring_as_reference(self.reference, policy) as scorer:
            return sequence_log_probs(scorer, batch, self.ld_alpha)[0]

    def loss_and_metrics(
        self, model: Any, batch: PaddingFreeBatch, num_items_in_batch: Any = None
    ) -> tuple[torch.Tensor, Metrics]:
        raise NotImplementedError

    def evaluation_loss_and_metrics(
        self, model: Any, batch: PaddingFreeBatch
    ) -> tuple[torch.Tensor, Metrics]:
        return self.loss_and_metrics(model, batch)

    def examples_in(self, batch: PaddingFreeBatch) -> int:
        return batch.num_sequences // 2  # two sequences per example: both sides, or KTO's pair


class DPOTrainer(PreferenceTrainer):
    """DPO and its variants (`pref_loss`: sigmoid, hinge, ipo, orpo, simpo)."""

    metric_names = (
        "rewards/chosen",
        "rewards/rejected",
        "rewards/accuracies",
        "rewards/margins",
        "logps/chosen",
        "logps/rejected",
    )
    reference_columns = ("ref_chosen_logps", "ref_rejected_logps")

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        finetuning = self.finetuning
        self.options = DPOOptions(
            loss=finetuning.pref_loss,
            beta=finetuning.pref_beta,
            label_smoothing=finetuning.dpo_label_smoothing,
            simpo_gamma=finetuning.simpo_gamma,
            ftx=finetuning.pref_ftx,
        )
        self.ld_alpha = finetuning.ld_alpha

    def loss_and_metrics(self, model, batch, num_items_in_batch=None):
        policy, counts = sequence_log_probs(model, batch, self.ld_alpha)
        reference = self.reference_log_probs(model, batch)
        pairs = dpo_loss(policy, reference, counts, self.options)
        # the log-probs the loss compared: per-token averages for ipo, orpo and simpo
        compared = policy / counts.clamp(min=1) if self.options.loss in AVERAGED else policy
        chosen, rejected = compared.detach().chunk(2)
        metrics = {
            "rewards/chosen": pairs.chosen_rewards,
            "rewards/rejected": pairs.rejected_rewards,
            "rewards/accuracies": (pairs.chosen_rewards > pairs.rejected_rewards).float(),
            "rewards/margins": pairs.chosen_rewards - pairs.rejected_rewards,
            "logps/chosen": chosen,
            "logps/rejected": rejected,
        }
        return pairs.losses.mean(), metrics


class KTOTrainer(PreferenceTrainer):
    """KTO on examples labelled desirable or undesirable (`kto_tag`)."""

    metric_names = ("rewards/chosen", "rewards/rejected", "logps/chosen", "logps/rejected", "kl")
    reference_columns = ("ref_logps", "ref_kl_logps")

    def loss_and_metrics(self, model, batch, num_items_in_batch=None):
        finetuning = self.finetuning
        desirable = batch.kto_tags
        count = desirable.numel()
        examples = batch.select_sequences(0, count)
        mismatched = batch.select_sequences(count, 2 * count)
        policy, counts = sequence_log_probs(model, examples)
        with scoring(self.accelerator.unwrap_model(model)) as scorer:
            policy_kl = sequence_log_probs(scorer, mismatched)[0]
        references = self.reference_log_probs(model, batch)
        assert references is not None  # KTO always compares with a reference
        reference, reference_kl = references.chunk(2)
        kl = kto_kl(policy_kl, reference_kl, self._sum_across_processes)
        losses, rewards = kto_loss(
            policy,
            reference,
            desirable,
            kl,
            finetuning.pref_beta,
            finetuning.kto_chosen_weight,
            finetuning.kto_rejected_weight,
        )
        loss = losses.mean()
        if finetuning.pref_ftx > 0 and desirable.any():
            loss = (
                loss + finetuning.pref_ftx * sft_term(policy[desirable], counts[desirable]).mean()
            )
        policy = policy.detach()
        metrics = {
            "rewards/chosen": rewards[desirable],
            "rewards/rejected": rewards[~desirable],
            "logps/chosen": policy[desirable],
            "logps/rejected": policy[~desirable],
            "kl": kl,
        }
        return loss, metrics

    def derived_metrics(self, means: dict[str, float], split: str) -> dict[str, float]:
        if "rewards/chosen" in means and "rewards/rejected" in means:
            return {"rewards/margins": means["rewards/chosen"] - means["rewards/rejected"]}
        return {}

    def _sum_across_processes(self, totals: torch.Tensor) -> torch.Tensor:
        if self.accelerator.num_processes > 1:
            return self.accelerator.reduce(totals, "sum")
        return totals


def disable_dropout(model: Any) -> None:
    """Dropout off (TRL's and LLaMA-Factory's default for DPO/KTO): the policy and its reference
    must score the same sequence the same way, or rewards carry noise from the first step."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        if isinstance(getattr(module, "attention_dropout", None), float):
            module.attention_dropout = 0.0
