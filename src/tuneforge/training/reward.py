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

from tuneforge.data.batch import PaddingFreeBatch
from tuneforge.models.value_head import (
    BIAS_KEY,
    WEIGHT_KEY,
    ValueHead,
    load_value_head,
    save_value_head,
    sequence_scores,
)
from tuneforge.training.trainer import Metrics, MetricTotals, Trainer
from tuneforge.training.zero3 import retied

REWARD_METRICS = ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins")


def pairwise_reward_loss(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """Mean of -log sigmoid(chosen - rejected) over pairs.

    Computed in float32 (a bf16/fp16 difference of large scores would round or overflow);
    logsigmoid is stable for any margin: a huge positive one costs 0, a huge negative one
    costs |margin|, never inf or NaN.
    """
    return -F.logsigmoid(chosen.float() - rejected.float()).mean()


def pairwise_metrics(chosen: torch.Tensor, rejected: torch.Tensor) -> Metrics:
    """Per-pair values of REWARD_METRICS: the scores, whether chosen wins, the margin."""
    chosen, rejected = chosen.detach().float(), rejected.detach().float()
    return {
        "rewards/chosen": chosen,
        "rewards/rejected": rejected,
        "rewards/accuracies": (chosen > rejected).float(),
        "rewards/margins": chosen - rejected,
    }


class ValueHeadSaving(Trainer):
    """Saving and resuming for a Trainer whose model is a ModelWithValueHead: the language
    model's own files (adapter or full weights) plus value_head.safetensors."""

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """`state_dict`, when transformers passes one, holds the weights to write: under
        DeepSpeed ZeRO-3 the modules hold empty placeholders and only this dict, gathered
        from every rank, has the trained values."""
        from transformers.trainer import TRAINING_ARGS_NAME

        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if not self.args.should_save:
            return
        assert output_dir is not None  # effective_training_arguments requires one
        os.makedirs(output_dir, exist_ok=True)
        wrapper = self.accelerator.unwrap_model(self.model)
        if state_dict is None:
            wrapper.save_pretrained(output_dir)
        else:
            save_with_value_head(wrapper, retied(wrapper, state_dict), output_dir)
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)
        torch.save(self.args, os.path.join(output_dir, TRAINING_ARGS_NAME))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
        wrapper = self.accelerator.unwrap_model(self.model)
        super()._load_from_checkpoint(resume_from_checkpoint, model=wrapper.pretrained_model)
        head = load_value_head(resume_from_checkpoint)
        if head is not None:
            wrapper.v_head.load_state_dict(head.state_dict())


def save_with_value_head(wrapper: Any, state_dict: dict[str, Any], folder: str) -> None:
    """A ModelWithValueHead's files from its full state dict (names as `wrapper.state_dict()`
    gives them): the language model's own files (adapter or full weights) from the
    `pretrained_model.` part, value_head.safetensors from the `v_head.` part."""
    prefix = "pretrained_model."
    model_state = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
    unknown = sorted(k for k in state_dict if not k.startswith((prefix, "v_head.")))
    missing = sorted({WEIGHT_KEY, BIAS_KEY} - state_dict.keys())
    if unknown or missing:  # not a ValueError: transformers reads that as "not gathered"
        raise RuntimeError(
            f"the state dict to save is not a ModelWithValueHead's: {unknown or missing}"
        )
    language_model = wrapper.pretrained_model
    kwargs: dict[str, Any] = {"state_dict": model_state}
    if hasattr(language_model, "peft_config"):  # as ModelWithValueHead.save_pretrained
        kwargs["selected_adapters"] = [language_model.active_adapter]
    language_model.save_pretrained(folder, **kwargs)
    weight = state_dict[WEIGHT_KEY]
    head = ValueHead(weight.shape[-1])
    head.summary.weight.data = weight.detach().reshape(1, -1)
    head.summary.bias.data = state_dict[BIAS_KEY].detach().reshape(1)
    save_value_head(head, folder)


class RewardTrainer(ValueHeadSaving):
    """Trains a ModelWithValueHead on pairwise batches; logs rewards/* each logging step and
    reports pairwise accuracy (`eval_accuracy`) in evaluation."""

    # compute_loss returns a mean over this micro-batch's pairs; transformers divides by the
    # accumulation steps
    loss_is_scaled_for_ga = False
    metric_names = REWARD_METRICS

    def loss_and_metrics(self, model, batch, num_items_in_batch=None):
        chosen, rejected = sequence_scores(model, batch).chunk(2)
        return pairwise_reward_loss(chosen, rejected), pairwise_metrics(chosen, rejected)

    def evaluation_loss_and_metrics(self, model, batch):
        return self.loss_and_metrics(model, batch)

    def examples_in(self, batch: PaddingFreeBatch) -> int:
        return batch.num_sequences // 2  # a pair (two sequences) is one example

    def derived_metrics(self, means: dict[str, float], split: str) -> dict[str, float]:
        if split == "eval" and "rewards/accuracies" in means:
            # LLaMA-Factory's name for the share of pairs ranked right
            return {"accuracy": means["rewards/accuracies"]}
        return {}


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
    totals = MetricTotals()
    with open(path, "w", encoding="utf-8") as handle:
        for start in range(0, len(dataset), size):
            rows = [dataset[i] for i in range(start, min(start + size, len(dataset)))]
            batch = trainer._prepare_inputs(PairwiseCollator()(rows))
            with torch.no_grad():
                chosen, rejected = sequence_scores(model, batch).float().chunk(2)
            totals.add(pairwise_metrics(chosen, rejected))
            for c, r in zip(chosen.tolist(), rejected.tolist()):
                handle.write(json.dumps({"chosen": round(c, 4), "rejected": round(r, 4)}) + "\n")
    trainer.accelerator.wait_for_everyone()
    means = {f"predict_{name}": value for name, value in totals.pop_means(REWARD_METRICS).items()}
    means["predict_accuracy"] = means["predict_rewards/accuracies"]
    return means
