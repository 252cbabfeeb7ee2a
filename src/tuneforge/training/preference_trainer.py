"""Trainers of the preference stages: DPO (and its family: ipo, hinge, orpo, simpo) and KTO.

Both subclass tuneforge's Trainer and differ only in their loss step. A batch is one
padding-free row (training/preference_collate.py): DPO's n chosen then n rejected sequences,
KTO's n examples then their n mismatched pairs. The policy scores it in one forward (KTO's
mismatched pairs in a second one, without gradients); the reference scores the whole row in one
forward, or not at all when its log-probabilities were precomputed into the dataset.

Metrics (rewards/chosen, rewards/rejected, rewards/accuracies, rewards/margins, logps/chosen,
logps/rejected, KTO's kl) are summed per example between two logging steps and logged as means,
summed across processes first; evaluation reports the same under the eval_ prefix.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from tuneforge.training.loss import token_losses
from tuneforge.training.preference_collate import (
    WithReferenceLogProbs,
    model_row,
    split_row,
)
from tuneforge.training.preference_losses import (
    AVERAGED,
    DPOOptions,
    dpo_loss,
    kto_kl,
    kto_loss,
    ld_weights,
    sft_term,
)
from tuneforge.training.reference import Reference, scoring, scoring_as_reference
from tuneforge.training.trainer import Trainer

logger = logging.getLogger("tuneforge")


def response_log_probs(
    model: Any, row: dict[str, Any], ld_alpha: float | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probabilities of each sequence's response tokens, and their counts.

    Args:
        model: scores the row (logits only at response positions).
        row: a padding-free row.
        ld_alpha: LD-DPO's weight of the tokens beyond the shorter response of each pair
            (see preference_losses.ld_weights); None weighs every token 1.

    Returns:
        (log_probs [num_sequences], token_counts [num_sequences]).
    """
    losses, keep = token_losses(model, row)
    lengths = row["cu_seq_lens_q"].diff().long()
    count = len(lengths)
    owner = torch.repeat_interleave(torch.arange(count, device=keep.device), lengths)[keep]
    token_log_probs = -losses
    if ld_alpha is not None:
        token_log_probs = token_log_probs * ld_weights(owner, count, ld_alpha)
    log_probs = token_log_probs.new_zeros(count).index_add(0, owner, token_log_probs)
    return log_probs, torch.bincount(owner, minlength=count)


class MetricTotals:
    """Per-example metric values summed (with their counts) until they are read as means."""

    def __init__(self) -> None:
        self._totals: dict[str, torch.Tensor] = {}

    def add(self, metrics: dict[str, torch.Tensor]) -> None:
        for name, values in metrics.items():
            values = values.detach().float().flatten()
            total = torch.stack([values.sum(), values.new_tensor(float(values.numel()))])
            self._totals[name] = self._totals[name] + total if name in self._totals else total

    def clear(self) -> None:
        self._totals.clear()

    def pop_means(self, names: tuple[str, ...], accelerator: Any) -> dict[str, float]:
        """Means over everything added since the last call (all processes); names with no
        values are left out."""
        device = accelerator.device
        empty = torch.zeros(2, device=device)
        totals = torch.stack([self._totals.get(name, empty).to(device) for name in names])
        self._totals.clear()
        if accelerator.num_processes > 1:  # every process holds every name, in one order
            totals = accelerator.reduce(totals, "sum")
        return {
            name: (total[0] / total[1]).item() for name, total in zip(names, totals) if total[1] > 0
        }


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
        self._metrics = {"train": MetricTotals(), "eval": MetricTotals()}
        self._precomputed = False
        disable_dropout(self.model)
        if reference is not None and reference.model is not None:
            if not getattr(reference.model, "is_quantized", False):
                reference.model.to(self.args.device)
            disable_dropout(reference.model)

    def precompute_reference(self) -> None:
        """Scores the train and eval sets with the reference once, as dataset columns, so that
        training runs no reference forward; a separate reference model is then released."""
        if self.reference is None:
            return
        self.train_dataset = self._with_reference_columns(self.train_dataset, "train")
        self.eval_dataset = self._with_reference_columns(self.eval_dataset, "eval")
        self.reference = Reference()
        self._precomputed = True

    def _with_reference_columns(self, dataset: Any, split: str) -> Any:
        if dataset is None:
            return None
        if isinstance(dataset, dict):
            return {
                name: self._with_reference_columns(part, name) for name, part in dataset.items()
            }
        from torch.utils.data import DataLoader

        loader = DataLoader(
            dataset, batch_size=self.args.per_device_eval_batch_size, collate_fn=self.data_collator
        )
        columns: tuple[list[float], list[float]] = ([], [])
        policy = self.accelerator.unwrap_model(self.model)
        for batch in loader:
            row = model_row(self._prepare_inputs(batch))
            with scoring_as_reference(self.reference, policy) as scorer:
                first, second = response_log_probs(scorer, row, self.ld_alpha)[0].chunk(2)
            columns[0].extend(first.tolist())
            columns[1].extend(second.tolist())
        logger.info(
            "Reference log-probabilities of %d %s examples precomputed.", len(dataset), split
        )
        for name, values in zip(self.reference_columns, columns):
            dataset = dataset.add_column(name, values)
        return dataset

    def reference_log_probs(self, model: Any, batch: dict[str, Any]) -> torch.Tensor | None:
        """The reference's log-probabilities of every sequence of the batch's row."""
        if self.reference is None:
            return None
        if "ref_log_probs" in batch:
            return batch["ref_log_probs"]
        if self._precomputed:
            raise RuntimeError("reference log-probabilities were precomputed but are missing")
        policy = self.accelerator.unwrap_model(model)
        with scoring_as_reference(self.reference, policy) as scorer:
            return response_log_probs(scorer, model_row(batch), self.ld_alpha)[0]

    def loss_and_metrics(
        self, model: Any, batch: dict[str, Any]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError

    def derived_metrics(self, means: dict[str, float]) -> dict[str, float]:
        """Metrics computed from the means (KTO's margins)."""
        return {}

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, metrics = self.loss_and_metrics(model, inputs)
        self._metrics["train"].add(metrics)
        return (loss, None) if return_outputs else loss

    def training_step(self, model, inputs, num_items_in_batch=None):
        sequences = len(inputs["cu_seq_lens_q"]) - 1
        self._examples_seen -= sequences // 2  # the base Trainer counts sequences: 2 per example
        return super().training_step(model, inputs, num_items_in_batch)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            loss, metrics = self.loss_and_metrics(model, inputs)
        self._metrics["eval"].add(metrics)
        return loss.detach(), None, None

    def evaluation_loop(self, *args: Any, **kwargs: Any):
        self._metrics["eval"].clear()
        output = super().evaluation_loop(*args, **kwargs)
        prefix = kwargs.get("metric_key_prefix", "eval")
        for name, value in self._means("eval").items():
            output.metrics[f"{prefix}_{name}"] = value
        return output

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:  # a training step's line (evaluation adds its own in evaluation_loop)
            logs.update(self._means("train"))
        super().log(logs, start_time)

    def _means(self, split: str) -> dict[str, float]:
        means = self._metrics[split].pop_means(self.metric_names, self.accelerator)
        return {**means, **self.derived_metrics(means)}


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

    def loss_and_metrics(self, model, batch):
        policy, counts = response_log_probs(model, model_row(batch), self.ld_alpha)
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

    def loss_and_metrics(self, model, batch):
        finetuning = self.finetuning
        desirable = batch["kto_tags"]
        examples, mismatched = split_row(batch, desirable.numel())
        policy, counts = response_log_probs(model, examples)
        with scoring(self.accelerator.unwrap_model(model)) as scorer:
            policy_kl = response_log_probs(scorer, mismatched)[0]
        reference, reference_kl = self.reference_log_probs(model, batch).chunk(2)
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

    def derived_metrics(self, means: dict[str, float]) -> dict[str, float]:
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
