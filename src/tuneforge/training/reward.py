"""Reward modelling: the pairwise loss and the Trainer of `stage: rm`.

A batch is a PairwiseCollator row (every chosen sequence, then every rejected one); one
forward scores all of them at their last tokens, and the loss pushes each chosen score above
its rejected one: -log sigmoid(r_chosen - r_rejected) (Bradley-Terry), averaged over pairs.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.nn.functional as F

from tuneforge.models.value_head import load_value_head, sequence_scores
from tuneforge.training.trainer import Trainer

REWARD_METRICS = ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins")


def pairwise_reward_loss(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """Mean of -log sigmoid(chosen - rejected) over pairs.

    Computed in float32 (a bf16/fp16 difference of large scores would round or overflow);
    logsigmoid is stable for any margin: a huge positive one costs 0, a huge negative one
    costs |margin|, never inf or NaN.
    """
    return -F.logsigmoid(chosen.float() - rejected.float()).mean()


def pairwise_metrics(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """Sums over pairs of [chosen score, rejected score, chosen > rejected, margin, 1]."""
    chosen, rejected = chosen.detach().float(), rejected.detach().float()
    return torch.stack(
        [
            chosen.sum(),
            rejected.sum(),
            (chosen > rejected).float().sum(),
            (chosen - rejected).sum(),
            torch.tensor(float(len(chosen)), device=chosen.device),
        ]
    )


def metric_means(sums: torch.Tensor, prefix: str = "") -> dict[str, float]:
    """REWARD_METRICS averaged from `pairwise_metrics` sums."""
    pairs = max(sums[-1].item(), 1.0)
    return {f"{prefix}{name}": round(s.item() / pairs, 4) for name, s in zip(REWARD_METRICS, sums)}


class ValueHeadSaving:
    """Saving and resuming for a Trainer whose model is a ModelWithValueHead: the language
    model's own files (adapter or full weights) plus value_head.safetensors."""

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        from transformers.trainer import TRAINING_ARGS_NAME

        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if not self.args.should_save:
            return
        os.makedirs(output_dir, exist_ok=True)
        self.accelerator.unwrap_model(self.model).save_pretrained(output_dir)
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)
        torch.save(self.args, os.path.join(output_dir, TRAINING_ARGS_NAME))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
        wrapper = self.accelerator.unwrap_model(self.model)
        super()._load_from_checkpoint(resume_from_checkpoint, model=wrapper.pretrained_model)
        head = load_value_head(resume_from_checkpoint)
        if head is not None:
            wrapper.v_head.load_state_dict(head.state_dict())


class RewardTrainer(ValueHeadSaving, Trainer):
    """Trains a ModelWithValueHead on pairwise batches; logs rewards/* each logging step and
    reports pairwise accuracy (`eval_accuracy`) in evaluation."""

    # compute_loss returns a mean over this micro-batch's pairs; transformers divides by the
    # accumulation steps
    loss_is_scaled_for_ga = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._train_sums = torch.zeros(len(REWARD_METRICS) + 1)
        self._eval_sums = torch.zeros(len(REWARD_METRICS) + 1)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        chosen, rejected = sequence_scores(model, inputs).chunk(2)
        loss = pairwise_reward_loss(chosen, rejected)
        sums = pairwise_metrics(chosen, rejected).cpu()
        if model.training:
            self._train_sums += sums
        else:
            self._eval_sums += sums
        return (loss, {"chosen": chosen, "rejected": rejected}) if return_outputs else loss

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        # the base counts sequences; a pair (two sequences) is one example
        self._examples_seen -= (len(inputs["cu_seq_lens_q"]) - 1) // 2
        return loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._train_sums[-1] > 0:  # a training log: this window's means
            logs.update(metric_means(self._reduce(self._train_sums)))
            self._train_sums.zero_()
        super().log(logs, start_time)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    def evaluation_loop(
        self,
        dataloader,
        description,
        prediction_loss_only=None,
        ignore_keys=None,
        metric_key_prefix="eval",
    ):
        self._eval_sums.zero_()
        output = super().evaluation_loop(
            dataloader,
            description,
            prediction_loss_only=prediction_loss_only,
            ignore_keys=ignore_keys,
            metric_key_prefix=metric_key_prefix,
        )
        prefix = f"{metric_key_prefix}_"
        means = metric_means(self._reduce(self._eval_sums), prefix)
        output.metrics.update(means)
        # LLaMA-Factory's name for the share of pairs ranked right
        output.metrics[f"{prefix}accuracy"] = means[f"{prefix}rewards/accuracies"]
        return output

    def _reduce(self, sums: torch.Tensor) -> torch.Tensor:
        return self.accelerator.reduce(sums.to(self.args.device), "sum").cpu()


def predict_scores(trainer: Any, dataset: Any, path: str) -> dict[str, float]:
    """`do_predict`: each pair's scores as a line of `path` ({"chosen", "rejected"}, as
    LLaMA-Factory writes them), on the main process; returns predict_* metrics."""
    import json

    from tuneforge.training.preference_collate import PairwiseCollator

    if not trainer.accelerator.is_main_process:
        trainer.accelerator.wait_for_everyone()
        return {}
    model = trainer.accelerator.unwrap_model(trainer.model).eval()
    size = trainer.args.per_device_eval_batch_size
    sums = torch.zeros(len(REWARD_METRICS) + 1)
    with open(path, "w", encoding="utf-8") as handle:
        for start in range(0, len(dataset), size):
            rows = [dataset[i] for i in range(start, min(start + size, len(dataset)))]
            batch = trainer._prepare_inputs(PairwiseCollator()(rows))
            with torch.no_grad():
                chosen, rejected = sequence_scores(model, batch).float().chunk(2)
            sums += pairwise_metrics(chosen, rejected).cpu()
            for c, r in zip(chosen.tolist(), rejected.tolist()):
                handle.write(json.dumps({"chosen": round(c, 4), "rejected": round(r, 4)}) + "\n")
    trainer.accelerator.wait_for_everyone()
    means = metric_means(sums, "predict_")
    means["predict_accuracy"] = means["predict_rewards/accuracies"]
    return means
