"""PPO for language models, as a training loop inside our Trainer.

One PPO step (LLaMA-Factory's sizes): take `per_device_train_batch_size x
gradient_accumulation_steps x ppo_buffer_size` prompts; generate a response to each with the
policy (stopping at the template's stop words) and score it with the reward model; compute,
without gradients, the policy's log-probabilities and values and the reference's
log-probabilities of every response token; turn them into KL-penalised rewards, GAE advantages
and value targets (training/ppo_math.py); then run `ppo_epochs` passes over the buffer in
shuffled mini-batches of `per_device_train_batch_size`, with an optimizer step every
`gradient_accumulation_steps` of them. The learning-rate schedule and `max_steps` count PPO
steps.

transformers' loop cannot express this (several optimizer steps per step, generation between
steps), so `train()` is our own loop; it drives the same callbacks (trainer_log.jsonl, loss
plot, checkpoints with their completion marker, Ctrl-C) and saves and resumes like any stage.
Sequences travel as padding-free rows, like every other batch in tuneforge.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import pad_sequence
from transformers.trainer_callback import ExportableState, TrainerState
from transformers.trainer_utils import TrainOutput, speed_metrics

from tuneforge.data.batch import PaddingFreeBatch
from tuneforge.training import ppo_math
from tuneforge.training.ppo_models import sequences_row
from tuneforge.training.predict import generate_batch, generation_kwargs
from tuneforge.training.reward import ValueHeadSaving

logger = logging.getLogger("tuneforge")
PPO_STATE_FILE = "ppo_state.json"  # KL coefficient and score statistics, in each checkpoint


@dataclass
class Experience:
    """A buffer of rollouts, one row per sequence, right-padded over response tokens."""

    prompts: list[list[int]]
    responses: list[list[int]]
    mask: torch.Tensor  # 1 at response tokens
    log_probs: torch.Tensor  # of the policy that generated them
    values: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor


def padded(rows: list[torch.Tensor] | tuple[torch.Tensor, ...]) -> torch.Tensor:
    return pad_sequence(list(rows), batch_first=True)


def until_stop(ids: list[int], stop_ids: set[int]) -> list[int]:
    """A generated response up to and including its first stop token (the policy learns to
    stop); all of it if none was generated."""
    for index, token in enumerate(ids):
        if token in stop_ids:
            return ids[: index + 1]
    return ids


class PPOTrainer(ValueHeadSaving):
    """PPO of a ModelWithValueHead policy (its head is the critic) against a reward scorer."""

    def __init__(
        self,
        *args: Any,
        train_dataset: Any,
        generation: Any,
        reward: Any,
        reference: Any,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, train_dataset=train_dataset, **kwargs)
        self.prompts: list[list[int]] = [list(ids) for ids in train_dataset["input_ids"]]
        self.generation = {**generation_kwargs(generation), "use_cache": True}
        self.reward = reward
        self.reference = reference
        self.kl_control = ppo_math.AdaptiveKLController(target=self.finetuning.ppo_target)
        self.score_moments = ppo_math.RunningMoments()
        self._tokens_at_start = 0  # num_input_tokens_seen when this session's training began

    # --- sizes --------------------------------------------------------------------------

    @property
    def buffer_size(self) -> int:
        """Prompts per PPO step on this process."""
        args = self.args
        batch = args.per_device_train_batch_size * args.gradient_accumulation_steps
        return batch * self.finetuning.ppo_buffer_size

    def total_steps(self) -> int:
        if self.args.max_steps > 0:
            return self.args.max_steps
        per_step = self.buffer_size * self.args.world_size
        return math.ceil(self.args.num_train_epochs * len(self.prompts) / per_step)

    def epochs_after(self, steps: int) -> float:
        """Passes over the prompts that `steps` PPO steps make."""
        return steps * self.buffer_size * self.args.world_size / len(self.prompts)

    def prompt_buffers(self, skip: int) -> Iterator[list[list[int]]]:
        """This process's prompts for each PPO step, epoch after epoch (seeded shuffles, so a
        resumed run sees the same order); the first `skip` buffers are passed over."""
        prompts = self.prompts
        size, world, rank = self.buffer_size, self.args.world_size, self.args.process_index
        order: list[int] = []
        epoch = step = 0
        while True:
            while len(order) < size * world:
                if self.finetuning.disable_shuffling:
                    order += list(range(len(prompts)))
                else:
                    generator = torch.Generator().manual_seed(self.args.seed + epoch)
                    order += torch.randperm(len(prompts), generator=generator).tolist()
                epoch += 1
            chunk, order = order[: size * world], order[size * world :]
            if step >= skip:
                yield [prompts[i] for i in chunk[rank * size : (rank + 1) * size]]
            step += 1

    # --- the loop -----------------------------------------------------------------------

    def train(  # type: ignore[override]  # PPO resumes from a path only (resolve_resume)
        self, resume_from_checkpoint: str | None = None, **kwargs: Any
    ) -> TrainOutput:
        args = self.args
        max_steps = self.total_steps()
        self.create_optimizer_and_scheduler(num_training_steps=max_steps)
        self.model_wrapped, self.optimizer = self.accelerator.prepare(self.model, self.optimizer)
        # callbacks and the control object whose state checkpoints keep (TrainerControl is no
        # TrainerCallback, though TrainerState annotates the list so)
        stateful: list[Any] = [
            cb
            for cb in [*self.callback_handler.callbacks, self.control]
            if isinstance(cb, ExportableState)
        ]
        self.state = TrainerState(stateful_callbacks=stateful)
        self.state.is_local_process_zero = self.is_local_process_zero()
        self.state.is_world_process_zero = self.is_world_process_zero()
        self.state.max_steps = max_steps
        self.state.num_train_epochs = math.ceil(self.epochs_after(max_steps))
        self.state.train_batch_size = self.buffer_size
        self.state.compute_steps(args, max_steps)
        if resume_from_checkpoint:
            self._resume(resume_from_checkpoint)
        start_step, started = self.state.global_step, time.time()
        self._tokens_at_start = self.state.num_input_tokens_seen
        buffers = self.prompt_buffers(skip=start_step)
        window: dict[str, list[float]] = defaultdict(list)
        total_loss = 0.0
        self.control = self.callback_handler.on_train_begin(args, self.state, self.control)
        while self.state.global_step < max_steps and not self.control.should_training_stop:
            self.control = self.callback_handler.on_step_begin(args, self.state, self.control)
            stats = self.ppo_step(next(buffers))
            assert self.lr_scheduler is not None  # created above
            self.lr_scheduler.step()
            self.state.global_step += 1
            self.state.epoch = self.epochs_after(self.state.global_step)
            total_loss += stats["ppo/loss/total"]
            for name, value in stats.items():
                window[name].append(value)
            self.control = self.callback_handler.on_step_end(args, self.state, self.control)
            if self.control.should_log:
                self.log(self._window_logs(window))
                window.clear()
            if self.control.should_save:
                self._save_checkpoint(self.model, trial=None)
                self.control = self.callback_handler.on_save(args, self.state, self.control)
        self.control = self.callback_handler.on_train_end(args, self.state, self.control)
        return self._train_output(start_step, started, total_loss)

    def _window_logs(self, window: dict[str, list[float]]) -> dict[str, float]:
        """Means over the steps since the last log; `loss` and `reward` are LLaMA-Factory's."""
        logs = {name: round(sum(v) / len(v), 6) for name, v in window.items()}
        logs["loss"] = logs["ppo/loss/total"]
        logs["reward"] = logs["rewards/mean"]
        logs["learning_rate"] = self._get_learning_rate()
        return logs

    def _train_output(self, start_step: int, started: float, total_loss: float) -> TrainOutput:
        steps = self.state.global_step - start_step
        examples = steps * self.buffer_size * self.args.world_size
        tokens = self.state.num_input_tokens_seen - self._tokens_at_start  # this session's
        metrics = speed_metrics("train", started, examples, steps, tokens)
        runtime = max(metrics["train_runtime"], 1e-9)
        metrics["train_loss"] = total_loss / max(steps, 1)
        metrics["train_examples"] = examples
        metrics["train_examples_per_second"] = round(examples / runtime, 3)
        metrics["effective_tokens_per_sec"] = round(tokens / runtime, 3)
        metrics["epoch"] = self.state.epoch
        self.log(dict(metrics))
        return TrainOutput(self.state.global_step, metrics["train_loss"], metrics)

    # --- one PPO step -------------------------------------------------------------------

    def ppo_step(self, prompts: list[list[int]]) -> dict[str, float]:
        """Rollouts, experience, then `ppo_epochs` of clipped updates; returns the step's stats."""
        responses, scores = self.rollout(prompts)
        raw_scores = scores.clone()
        if self.finetuning.ppo_score_norm:
            self.score_moments.update(scores)
            scores = self.score_moments.normalise(scores)
        experience, stats = self.make_experience(prompts, responses, scores)
        stats |= self.optimise(experience)
        stats["rewards/mean"] = raw_scores.mean().item()
        stats["rewards/std"] = raw_scores.std().item() if len(raw_scores) > 1 else 0.0
        stats["ppo/response_length"] = float(sum(map(len, responses)) / len(responses))
        self.kl_control.update(stats["ppo/kl"], self.buffer_size * self.args.world_size)
        tokens = sum(len(p) + len(r) for p, r in zip(prompts, responses))
        self.state.num_input_tokens_seen += int(
            self.accelerator.reduce(torch.tensor(tokens, device=self.args.device), "sum").item()
        )
        return stats

    @torch.no_grad()
    def rollout(self, prompts: list[list[int]]) -> tuple[list[list[int]], torch.Tensor]:
        """A sampled response to each prompt (mini-batch by mini-batch) and its score."""
        policy = self.accelerator.unwrap_model(self.model).eval()
        language_model = policy.pretrained_model
        stop_ids = language_model.generation_config.eos_token_id
        stop_ids = set(stop_ids if isinstance(stop_ids, list) else [stop_ids])
        size = self.args.per_device_train_batch_size
        responses: list[list[int]] = []
        scores = []
        for start in range(0, len(prompts), size):
            chunk = prompts[start : start + size]
            generated = generate_batch(
                language_model, self.processing_class, chunk, self.generation
            )
            answers = [until_stop(ids, stop_ids) for ids in generated]
            responses += answers
            scores.append(self.reward(chunk, answers))
        return responses, torch.cat(scores).to(self.args.device)

    def response_outputs(
        self, model: Any, row: PaddingFreeBatch
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-probability and value of every response token of a `sequences_row`, in order
        (flat: split them by response length)."""
        keep = row.trained_positions()
        with self.autocast_smart_context_manager():
            logits, values = model(row, keep, with_logits=True)
        log_probs = -F.cross_entropy(logits.float(), row.targets[0, keep], reduction="none")
        return log_probs, values.float()

    @torch.no_grad()
    def make_experience(
        self, prompts: list[list[int]], responses: list[list[int]], scores: torch.Tensor
    ) -> tuple[Experience, dict[str, float]]:
        """Rollout log-probs and values, the reference's log-probs, rewards and advantages."""
        policy = self.accelerator.unwrap_model(self.model).eval()
        size = self.args.per_device_train_batch_size
        log_prob_rows: list[torch.Tensor] = []
        value_rows: list[torch.Tensor] = []
        ref_rows: list[torch.Tensor] = []
        for start in range(0, len(prompts), size):
            chunk = responses[start : start + size]
            row = sequences_row(prompts[start : start + size], chunk, self.args.device)
            lengths = [len(r) for r in chunk]
            chunk_log_probs, chunk_values = self.response_outputs(policy, row)
            with self.autocast_smart_context_manager():
                reference = self.reference(row).float()
            log_prob_rows += chunk_log_probs.split(lengths)
            value_rows += chunk_values.split(lengths)
            ref_rows += reference.split(lengths)
        mask = padded([torch.ones_like(lp) for lp in log_prob_rows])
        log_probs, values, ref_log_probs = (
            padded(log_prob_rows),
            padded(value_rows),
            padded(ref_rows),
        )
        rewards, kl = ppo_math.kl_penalized_rewards(
            scores, log_probs, ref_log_probs, mask, self.kl_control.value
        )
        if self.finetuning.ppo_whiten_rewards:
            rewards = ppo_math.masked_whiten(rewards, mask, shift_mean=False)
        advantages, returns = ppo_math.gae_advantages(rewards, values, mask)
        advantages = ppo_math.masked_whiten(advantages, mask)
        stats = {
            "ppo/kl": kl.sum(dim=1).mean().item(),
            "ppo/kl_coef": self.kl_control.value,
            "ppo/returns/mean": ppo_math.masked_mean(returns, mask).item(),
            "ppo/values/mean": ppo_math.masked_mean(values, mask).item(),
            "ppo/scores/mean": scores.mean().item(),
        }
        experience = Experience(prompts, responses, mask, log_probs, values, advantages, returns)
        return experience, stats

    def optimise(self, experience: Experience) -> dict[str, float]:
        """`ppo_epochs` passes over the buffer in shuffled mini-batches; an optimizer step per
        `gradient_accumulation_steps` mini-batches."""
        args = self.args
        model, optimizer = self.model, self.optimizer
        assert model is not None and optimizer is not None  # set up by train()
        policy = self.model_wrapped.train()
        size, accumulation = args.per_device_train_batch_size, args.gradient_accumulation_steps
        sums: dict[str, float] = defaultdict(float)
        updates = 0
        for _ in range(self.finetuning.ppo_epochs):
            order = torch.randperm(len(experience.prompts)).tolist()
            batches = [order[i : i + size] for i in range(0, len(order), size)]
            for index, batch in enumerate(batches):
                losses = self.minibatch_losses(policy, experience, batch)
                self.accelerator.backward(losses["ppo/loss/total"] / accumulation)
                for name, value in losses.items():
                    sums[name] += value.item()
                updates += 1
                if (index + 1) % accumulation == 0 or index + 1 == len(batches):
                    if args.max_grad_norm and args.max_grad_norm > 0:
                        self.accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                    optimizer.step()
                    optimizer.zero_grad()
        return {name: total / updates for name, total in sums.items()}

    def minibatch_losses(
        self, policy: Any, experience: Experience, batch: list[int]
    ) -> dict[str, torch.Tensor]:
        """Clipped policy and value losses of the sequences `batch` of the buffer."""
        responses = [experience.responses[i] for i in batch]
        row = sequences_row([experience.prompts[i] for i in batch], responses, self.args.device)
        lengths = [len(r) for r in responses]
        log_probs, values = (padded(t.split(lengths)) for t in self.response_outputs(policy, row))
        width = max(lengths)
        old = {
            name: getattr(experience, name)[batch, :width]
            for name in ("mask", "log_probs", "values", "advantages", "returns")
        }
        mask = old["mask"]
        policy_loss, policy_clipped = ppo_math.clipped_policy_loss(
            log_probs, old["log_probs"], old["advantages"], mask
        )
        value_loss, value_clipped = ppo_math.clipped_value_loss(
            values, old["values"], old["returns"], mask
        )
        with torch.no_grad():
            approx_kl = 0.5 * ppo_math.masked_mean((log_probs - old["log_probs"]) ** 2, mask)
        return {
            "ppo/loss/total": policy_loss + ppo_math.VALUE_COEF * value_loss,
            "ppo/loss/policy": policy_loss.detach(),
            "ppo/loss/value": value_loss.detach(),
            "ppo/policy/approxkl": approx_kl,
            "ppo/policy/clipfrac": policy_clipped,
            "ppo/val/clipfrac": value_clipped,
        }

    # --- checkpoints --------------------------------------------------------------------

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        super()._save_checkpoint(model, trial)
        if self.args.should_save:
            assert self.args.output_dir is not None  # effective_training_arguments requires one
            folder = os.path.join(self.args.output_dir, f"checkpoint-{self.state.global_step}")
            state = {"kl_coef": self.kl_control.value, "score_moments": asdict(self.score_moments)}
            with open(os.path.join(folder, PPO_STATE_FILE), "w", encoding="utf-8") as handle:
                json.dump(state, handle)

    def _resume(self, checkpoint: str) -> None:
        """Weights, value head, optimizer, schedule, RNG, step and KL state of a checkpoint."""
        self._load_from_checkpoint(checkpoint)
        self._load_optimizer_and_scheduler(checkpoint)
        self._load_rng_state(checkpoint)
        saved = TrainerState.load_from_json(os.path.join(checkpoint, "trainer_state.json"))
        self.state.global_step = saved.global_step
        self.state.epoch = saved.epoch
        self.state.log_history = saved.log_history
        self.state.num_input_tokens_seen = saved.num_input_tokens_seen
        ppo_state_path = os.path.join(checkpoint, PPO_STATE_FILE)
        if os.path.isfile(ppo_state_path):
            with open(ppo_state_path, encoding="utf-8") as handle:
                ppo_state = json.load(handle)
            self.kl_control.value = ppo_state["kl_coef"]
            self.score_moments = ppo_math.RunningMoments(**ppo_state["score_moments"])
        logger.info("Resumed PPO at step %d from %s.", saved.global_step, checkpoint)
