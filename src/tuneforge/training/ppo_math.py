"""The arithmetic of PPO for language models, as small pure functions on [sequences, tokens]
tensors with a mask of real (response) tokens.

The formulas follow Ziegler et al. 2019 ("Fine-Tuning Language Models from Human
Preferences") as TRL's classic PPOTrainer implemented them, which LLaMA-Factory's ppo stage
runs: a per-token KL penalty against the reference model with the score added at the last
token, GAE advantages (gamma 1, lambda 0.95) whitened over the batch, clipped policy and value
losses, and an adaptive KL coefficient steered towards a target KL.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

GAMMA = 1.0  # no discount within a response
LAMBDA = 0.95  # GAE's bias/variance trade-off
CLIP_RANGE = 0.2  # policy ratio clip
CLIP_RANGE_VALUE = 0.2  # value clip, around the values of the rollout
VALUE_COEF = 0.1  # weight of the value loss in the total
INITIAL_KL_COEF = 0.2
KL_HORIZON = 10_000  # examples over which the KL coefficient may change by e (at most 20%)


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of `values` where `mask` is 1."""
    return (values * mask).sum() / mask.sum().clamp(min=1)


def masked_var(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Unbiased variance of `values` where `mask` is 1."""
    mean = masked_mean(values, mask)
    count = mask.sum()
    squares = masked_mean((values - mean) ** 2, mask)
    return squares * count / (count - 1).clamp(min=1)


def masked_whiten(
    values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True
) -> torch.Tensor:
    """(values - mean) / std over the masked entries; the mean is added back if not
    `shift_mean` (rewards keep their sign, only their scale changes). Zero where masked out."""
    mean, var = masked_mean(values, mask), masked_var(values, mask)
    whitened = (values - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask


def kl_penalized_rewards(
    scores: torch.Tensor,
    log_probs: torch.Tensor,
    ref_log_probs: torch.Tensor,
    mask: torch.Tensor,
    kl_coef: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards: -kl_coef * (log p - log p_ref) at every response token, plus the
    sequence's score at its last token.

    Args:
        scores: [sequences] reward-model scores.
        log_probs, ref_log_probs, mask: [sequences, tokens].
        kl_coef: the current KL coefficient.

    Returns:
        (rewards [sequences, tokens], per-token KL [sequences, tokens]), both zero where masked.
    """
    kl = (log_probs - ref_log_probs) * mask
    rewards = -kl_coef * kl
    last = mask.sum(dim=1).long() - 1
    rows = torch.arange(len(scores), device=scores.device)
    rewards[rows, last] += scores
    return rewards, kl


def gae_advantages(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float = GAMMA,
    lam: float = LAMBDA,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over right-padded responses.

    delta_t = r_t + gamma * V_{t+1} - V_t (V after the last token is 0), A_t = sum_k
    (gamma * lam)^k delta_{t+k}; returns R_t = A_t + V_t are the value targets.

    Returns:
        (advantages, returns), [sequences, tokens], zero where masked.
    """
    rewards, values = rewards * mask, values * mask
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        next_value = values[:, t + 1] if t + 1 < rewards.shape[1] else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = delta + gamma * lam * running
        advantages[:, t] = running
    advantages = advantages * mask
    return advantages, (advantages + values) * mask


def clipped_policy_loss(
    log_probs: torch.Tensor,
    old_log_probs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float = CLIP_RANGE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate: mean of max(-A r, -A clip(r, 1 - eps, 1 + eps)), with r the
    probability ratio of the new and the rollout policy. Returns (loss, fraction clipped)."""
    ratio = torch.exp(log_probs - old_log_probs)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1 - clip_range, 1 + clip_range)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    return loss, masked_mean((clipped > unclipped).float(), mask)


def clipped_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float = CLIP_RANGE_VALUE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """0.5 * mean of max((V - R)^2, (V_clipped - R)^2), V_clipped kept within clip_range of
    the rollout's values. Returns (loss, fraction clipped)."""
    clipped_values = torch.clamp(values, old_values - clip_range, old_values + clip_range)
    unclipped_loss = (values - returns) ** 2
    clipped_loss = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(unclipped_loss, clipped_loss), mask)
    return loss, masked_mean((clipped_loss > unclipped_loss).float(), mask)


@dataclass
class AdaptiveKLController:
    """Ziegler et al.'s proportional controller: the coefficient grows when the measured KL
    exceeds the target and shrinks below it, by at most 20% per horizon of examples."""

    value: float = INITIAL_KL_COEF
    target: float = 6.0
    horizon: int = KL_HORIZON

    def update(self, current_kl: float, examples: int) -> None:
        error = min(max(current_kl / self.target - 1, -0.2), 0.2)
        self.value *= 1 + error * examples / self.horizon


@dataclass
class RunningMoments:
    """Running mean and (unbiased) standard deviation of all scores seen, merged batch by
    batch (Chan et al.'s parallel update); `ppo_score_norm` normalises scores with them."""

    mean: float = 0.0
    std: float = 1.0
    var: float = 1.0
    count: float = 1e-24

    def update(self, scores: torch.Tensor) -> None:
        scores = scores.double()
        batch_mean = scores.mean().item()
        batch_var = scores.var(unbiased=False).item()
        batch_count = len(scores)
        delta = batch_mean - self.mean
        total = self.count + batch_count
        squares = self.var * self.count + batch_var * batch_count
        squares += delta**2 * self.count * batch_count / total
        self.mean += delta * batch_count / total
        self.var = squares / total
        self.std = (self.var * total / max(total - 1, 1)) ** 0.5
        self.count = total

    def normalise(self, scores: torch.Tensor) -> torch.Tensor:
        """Scores shifted by the running mean and scaled by the running std."""
        return (scores - self.mean) / (self.std + torch.finfo(scores.dtype).eps)
