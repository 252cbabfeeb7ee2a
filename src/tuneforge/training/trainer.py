"""The one Trainer subclass every stage uses: transformers' Trainer with tuneforge's loss on
padding-free batches (data/batch.py), LoRA+ parameter groups, and metrics written once.

A stage's Trainer says what a batch costs and measures in `loss_and_metrics`: the loss, and
per-example (or per-token) metric values. The base class does the rest, the same way for every
stage: training logs carry each metric's mean since the last logging step, evaluation reports
the means over the evaluation set under its prefix (`eval_accuracy`, `eval_rewards/margins`),
both summed across processes first.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from transformers import Trainer as HFTrainer

from tuneforge.data.batch import PaddingFreeBatch
from tuneforge.training.loss import language_model_loss_terms, router_loss_coefficient
from tuneforge.training.optimizers import loraplus_groups
from tuneforge.training.zero3 import retied

Metrics = dict[str, torch.Tensor]


class MetricTotals:
    """Metric values summed (with their counts) until they are read as means."""

    def __init__(self) -> None:
        self._totals: dict[str, torch.Tensor] = {}

    def add(self, metrics: Metrics) -> None:
        for name, values in metrics.items():
            values = values.detach().float().flatten()
            total = torch.stack([values.sum(), values.new_tensor(float(values.numel()))])
            self._totals[name] = self._totals[name] + total if name in self._totals else total

    def clear(self) -> None:
        self._totals.clear()

    def pop_means(self, names: tuple[str, ...], accelerator: Any = None) -> dict[str, float]:
        """Means over everything added since the last call, on all processes when an
        `accelerator` is given; names with no values are left out.

        Every process must call this with the same names at the same time: the totals are
        summed across processes in one collective.
        """
        if not names:
            return {}
        device = accelerator.device if accelerator is not None else "cpu"
        empty = torch.zeros(2, device=device)
        totals = torch.stack([self._totals.get(name, empty).to(device) for name in names])
        self._totals.clear()
        if accelerator is not None and accelerator.num_processes > 1:
            totals = accelerator.reduce(totals, "sum")
        return {
            name: (total[0] / total[1]).item() for name, total in zip(names, totals) if total[1] > 0
        }


class Trainer(HFTrainer):
    """Language modelling (pt, sft); the base of every other stage's Trainer."""

    # compute_loss divides by the trained tokens of the whole accumulated batch itself
    loss_is_scaled_for_ga = True
    # the names `loss_and_metrics` may return, in one order on every process
    metric_names: tuple[str, ...] = ()

    def __init__(
        self,
        *args: Any,
        finetuning: Any = None,
        max_pass_tokens: int | None = None,
        **kwargs: Any,
    ):
        """`max_pass_tokens`: run each batch through the model in passes of at most this many
        tokens (whole examples), which bounds the activations kept for backward without
        changing the gradient; None: one pass per batch."""
        super().__init__(*args, **kwargs)
        self.finetuning = finetuning
        self.max_pass_tokens = max_pass_tokens
        if finetuning is not None and finetuning.compute_accuracy:
            self.metric_names = ("accuracy",)
        if router_loss_coefficient(self.model) is not None:  # MoE: log the router loss's mean
            self.metric_names = (*self.metric_names, "aux_loss")
        self._metrics = {"train": MetricTotals(), "eval": MetricTotals()}
        self._examples_seen = 0  # examples, not rows: a packed row holds several

    # --- what a batch costs: stages override these ------------------------------------

    def loss_and_metrics(
        self, model: Any, batch: PaddingFreeBatch, num_items_in_batch: Any = None
    ) -> tuple[torch.Tensor, Metrics]:
        """A training batch's loss and metric values."""
        terms = language_model_loss_terms(
            model, batch, num_items_in_batch, label_smoothing=self.args.label_smoothing_factor
        )
        loss = terms.loss
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            # the denominator counts every device's tokens, and DDP averages the gradients
            loss = loss * self.accelerator.num_processes
        if terms.router_loss is None:
            return loss, {}
        return loss, {"aux_loss": terms.router_loss}

    def evaluation_loss_and_metrics(
        self, model: Any, batch: PaddingFreeBatch
    ) -> tuple[torch.Tensor, Metrics]:
        """An evaluation batch's loss and metric values (under no_grad). For language
        modelling: the mean over the batch's trained tokens plus an MoE model's weighted
        router loss (as in training, and as transformers computes it), computed without the
        fused training loss; the router loss; each token's correctness with
        `compute_accuracy`."""
        terms = language_model_loss_terms(
            model, batch, with_predictions=True, label_smoothing=self.args.label_smoothing_factor
        )
        metrics: Metrics = {}
        if terms.router_loss is not None:
            metrics["aux_loss"] = terms.router_loss
        if "accuracy" in self.metric_names and terms.predictions is not None:
            keep = batch.trained_positions()
            metrics["accuracy"] = terms.predictions == batch.targets[0, keep]
        return terms.loss, metrics

    def examples_in(self, batch: PaddingFreeBatch) -> int:
        """How many examples a batch holds (for examples/s): one per sequence here."""
        return batch.num_sequences

    def derived_metrics(self, means: dict[str, float], split: str) -> dict[str, float]:
        """Metrics computed from the means (KTO's margins, the reward model's accuracy)."""
        return {}

    # --- transformers' hooks, written once ----------------------------------------------

    def _prepare_inputs(self, inputs: PaddingFreeBatch) -> PaddingFreeBatch:  # type: ignore[override]
        return inputs.to(self.args.device)

    def _run_epoch(self, *args: Any, **kwargs: Any) -> None:
        # transformers 5 trains one step past max_steps when it resumes from the last
        # checkpoint (a run killed after its final save, or a finished command run again)
        if self.state.max_steps > 0 and self.state.global_step >= self.state.max_steps:
            self.control.should_training_stop = True
            return
        super()._run_epoch(*args, **kwargs)

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        if state_dict is not None:  # DeepSpeed's copies: tied weights one tensor again
            state_dict = retied(self.accelerator.unwrap_model(self.model), state_dict)
        super()._save(output_dir, state_dict)

    def training_step(self, model, inputs, num_items_in_batch=None):
        self._examples_seen += self.examples_in(inputs)
        budget = self.max_pass_tokens
        if budget is None or inputs.num_tokens <= budget:
            return super().training_step(model, inputs, num_items_in_batch)
        # Each pass's loss is divided by the whole batch's trained tokens, so the summed
        # gradients equal one pass over the batch; DDP syncs only on the last pass.
        passes = inputs.passes(budget)
        losses = []
        for index, row in enumerate(passes):
            last = index == len(passes) - 1
            with contextlib.nullcontext() if last else self.accelerator.no_sync(model):
                losses.append(super().training_step(model, row, num_items_in_batch))
        return torch.stack(losses).sum()

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, metrics = self.loss_and_metrics(model, inputs, num_items_in_batch)
        self._metrics["train"].add(metrics)
        return (loss, None) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """Evaluation loss and metrics, without gathering logits."""
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            loss, metrics = self.evaluation_loss_and_metrics(model, inputs)
        self._metrics["eval"].add(metrics)
        return loss.detach(), None, None

    def evaluation_loop(
        self,
        dataloader,
        description,
        prediction_loss_only=None,
        ignore_keys=None,
        metric_key_prefix="eval",
    ):
        self._metrics["eval"].clear()
        output = super().evaluation_loop(
            dataloader,
            description,
            prediction_loss_only=prediction_loss_only,
            ignore_keys=ignore_keys,
            metric_key_prefix=metric_key_prefix,
        )
        assert output.metrics is not None  # transformers' evaluation_loop always fills them
        for name, value in self._means("eval").items():
            output.metrics[f"{metric_key_prefix}_{name}"] = value
        return output

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:  # a training step's line (evaluation adds its own in evaluation_loop)
            logs.update(self._means("train"))
        super().log(logs, start_time)

    def _means(self, split: str) -> dict[str, float]:
        means = self._metrics[split].pop_means(self.metric_names, self.accelerator)
        return {**means, **self.derived_metrics(means, split)}

    def train(self, *args: Any, **kwargs: Any):
        """transformers' train(), with examples and effective tokens per second added."""
        result = super().train(*args, **kwargs)
        seen = torch.tensor(self._examples_seen, device=self.args.device)
        examples = int(self.accelerator.reduce(seen, "sum").item())
        runtime = max(result.metrics.get("train_runtime", 0.0), 1e-9)
        result.metrics["train_examples"] = examples
        result.metrics["train_examples_per_second"] = round(examples / runtime, 3)
        tokens = self.state.num_input_tokens_seen  # padding-free: all of them are effective
        result.metrics["effective_tokens_per_sec"] = round(tokens / runtime, 3)
        return result

    def create_optimizer(self, model=None):
        ratio = self.finetuning.loraplus_lr_ratio if self.finetuning else None
        if self.optimizer is None and ratio:
            # a PeftModel works too, though transformers annotates a PreTrainedModel
            model_type: Any = self.model
            optimizer_cls, kwargs = self.get_optimizer_cls_and_kwargs(self.args, model_type)
            kwargs.pop("lr", None)
            groups = loraplus_groups(
                self.model,
                self.args.learning_rate,
                ratio,
                self.finetuning.loraplus_lr_embedding,
                self.args.weight_decay,
            )
            self.optimizer = optimizer_cls(groups, **kwargs)
        return super().create_optimizer()
