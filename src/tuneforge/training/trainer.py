"""The one Trainer subclass every stage uses: transformers' Trainer with tuneforge's loss on
padding-free batches, LoRA+ parameter groups, and token accuracy in evaluation."""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from transformers import Trainer as HFTrainer

from tuneforge.training.collate import split_row
from tuneforge.training.loss import language_model_loss, token_losses
from tuneforge.training.optimizers import loraplus_groups


class Trainer(HFTrainer):
    # compute_loss divides by the trained tokens of the whole accumulated batch itself
    loss_is_scaled_for_ga = True

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
        self._accuracy = torch.zeros(2, dtype=torch.long)  # correct, counted
        self._examples_seen = 0  # examples, not rows: a packed row holds several

    def training_step(self, model, inputs, num_items_in_batch=None):
        self._examples_seen += len(inputs["cu_seq_lens_q"]) - 1
        budget = self.max_pass_tokens
        if budget is None or inputs["input_ids"].shape[1] <= budget:
            return super().training_step(model, inputs, num_items_in_batch)
        # Each pass's loss is divided by the whole batch's trained tokens, so the summed
        # gradients equal one pass over the batch; DDP syncs only on the last pass.
        passes = split_row(inputs, budget)
        loss = 0.0
        for index, row in enumerate(passes):
            last = index == len(passes) - 1
            with contextlib.nullcontext() if last else self.accelerator.no_sync(model):
                loss = loss + super().training_step(model, row, num_items_in_batch)
        return loss

    def train(self, *args: Any, **kwargs: Any):
        """transformers' train(), with examples and effective tokens per second added."""
        result = super().train(*args, **kwargs)
        examples = torch.tensor(self._examples_seen, device=self.args.device)
        examples = int(self.accelerator.reduce(examples, "sum").item())
        runtime = max(result.metrics.get("train_runtime", 0.0), 1e-9)
        result.metrics["train_examples"] = examples
        result.metrics["train_examples_per_second"] = round(examples / runtime, 3)
        tokens = self.state.num_input_tokens_seen  # padding-free: all of them are effective
        result.metrics["effective_tokens_per_sec"] = round(tokens / runtime, 3)
        return result

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, _ = language_model_loss(model, inputs, num_items_in_batch)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            # the denominator counts every device's tokens, and DDP averages the gradients
            loss = loss * self.accelerator.num_processes
        return (loss, None) if return_outputs else loss

    def create_optimizer(self, model=None):
        ratio = self.finetuning.loraplus_lr_ratio if self.finetuning else None
        if self.optimizer is None and ratio:
            optimizer_cls, kwargs = self.get_optimizer_cls_and_kwargs(self.args, self.model)
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

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """Evaluation loss (mean over the batch's trained tokens) without gathering logits."""
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            losses, keep, predicted = token_losses(model, inputs, with_predictions=True)
        targets = inputs["shift_labels"][0, keep]
        self._accuracy += torch.tensor([(predicted == targets).sum().item(), keep.numel()])
        loss = losses.mean() if keep.numel() else losses.sum()
        return loss.detach(), None, None

    def evaluation_loop(self, *args: Any, **kwargs: Any):
        self._accuracy.zero_()
        output = super().evaluation_loop(*args, **kwargs)
        if self.finetuning is not None and self.finetuning.compute_accuracy:
            prefix = kwargs.get("metric_key_prefix", args[3] if len(args) > 3 else "eval")
            counts = self.accelerator.reduce(self._accuracy.to(self.args.device), "sum")
            output.metrics[f"{prefix}_accuracy"] = round(
                counts[0].item() / max(counts[1].item(), 1), 4
            )
        return output
