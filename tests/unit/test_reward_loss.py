"""The reward model's pairwise loss and PPO's arithmetic, against values computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from tuneforge.training import ppo_math
from tuneforge.training.ppo import until_stop
from tuneforge.training.reward import REWARD_METRICS, pairwise_metrics, pairwise_reward_loss
from tuneforge.training.trainer import MetricTotals


def close(actual: torch.Tensor, expected: list) -> None:
    torch.testing.assert_close(actual, torch.tensor(expected), rtol=1e-5, atol=1e-6)


def test_pairwise_loss_by_hand():
    loss = pairwise_reward_loss(torch.tensor([2.0, 0.0]), torch.tensor([0.0, 0.0]))
    # -log sigmoid(2) = log(1 + e^-2); -log sigmoid(0) = log 2
    expected = (math.log(1 + math.exp(-2)) + math.log(2)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_pairwise_loss_gradient_pushes_chosen_up_and_rejected_down():
    chosen = torch.tensor([0.5], requires_grad=True)
    rejected = torch.tensor([1.0], requires_grad=True)
    pairwise_reward_loss(chosen, rejected).backward()
    # d/dm -log sigmoid(m) = -sigmoid(-m), m = chosen - rejected = -0.5
    slope = 1 / (1 + math.exp(-0.5))
    assert chosen.grad.item() == pytest.approx(-slope, rel=1e-6)
    assert rejected.grad.item() == pytest.approx(slope, rel=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_pairwise_loss_is_finite_at_extreme_margins(dtype):
    big = 6.0e4  # near fp16's limit: chosen - rejected would overflow to inf in fp16
    chosen = torch.tensor([big, -big], dtype=dtype, requires_grad=True)
    rejected = torch.tensor([-big, big], dtype=dtype, requires_grad=True)
    loss = pairwise_reward_loss(chosen, rejected)
    loss.backward()
    # the right pair costs 0, the wrong one its whole margin; the mean is half of that
    margin = 2 * chosen[0].float().item()
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(margin / 2, rel=1e-3)
    assert torch.isfinite(chosen.grad).all() and torch.isfinite(rejected.grad).all()
    assert chosen.grad.float().tolist() == pytest.approx([0.0, -0.5])


def test_pairwise_metrics_average_over_pairs():
    totals = MetricTotals()
    totals.add(pairwise_metrics(torch.tensor([1.0, -1.0]), torch.tensor([0.0, 0.0])))
    totals.add(pairwise_metrics(torch.tensor([3.0]), torch.tensor([1.0])))  # a second batch
    assert totals.pop_means(REWARD_METRICS) == {
        "rewards/chosen": 1.0,
        "rewards/rejected": pytest.approx(1 / 3, abs=1e-4),
        "rewards/accuracies": pytest.approx(2 / 3, abs=1e-4),
        "rewards/margins": pytest.approx(2 / 3, abs=1e-4),
    }
    assert totals.pop_means(REWARD_METRICS) == {}  # read once: the next window starts empty


def test_kl_penalty_per_token_and_score_at_the_last_token():
    log_probs = torch.tensor([[-1.0, -2.0, -3.0], [-1.0, -1.0, 7.0]])
    ref_log_probs = torch.tensor([[-1.5, -2.0, -2.0], [-1.0, -2.0, 5.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    rewards, kl = ppo_math.kl_penalized_rewards(
        torch.tensor([1.0, -2.0]), log_probs, ref_log_probs, mask, kl_coef=0.1
    )
    close(kl, [[0.5, 0.0, -1.0], [0.0, 1.0, 0.0]])
    close(rewards, [[-0.05, 0.0, 1.1], [0.0, -2.1, 0.0]])


def test_gae_by_hand_with_padding_ignored():
    # sequence 1: three tokens; sequence 2: two tokens and a pad holding garbage
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 2.0, 9.0]])
    values = torch.tensor([[0.5, 0.5, 0.5], [1.0, 0.0, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    advantages, returns = ppo_math.gae_advantages(rewards, values, mask, gamma=1.0, lam=0.5)
    # seq 1: deltas (0, 0, 0.5) -> A = (0.125, 0.25, 0.5); seq 2: deltas (-1, 2) -> A = (0, 2)
    close(advantages, [[0.125, 0.25, 0.5], [0.0, 2.0, 0.0]])
    close(returns, [[0.625, 0.75, 1.0], [1.0, 2.0, 0.0]])


def test_gae_with_lambda_one_is_the_return_minus_the_value():
    rewards = torch.tensor([[1.0, 2.0, 3.0]])
    values = torch.tensor([[0.5, -1.0, 2.0]])
    advantages, returns = ppo_math.gae_advantages(rewards, values, torch.ones(1, 3), 1.0, 1.0)
    close(returns, [[6.0, 5.0, 3.0]])  # rewards to go
    close(advantages, [[5.5, 6.0, 1.0]])


def test_clipped_policy_loss_by_hand():
    ratios = torch.tensor([[1.5, 0.5, 1.0]])
    advantages = torch.tensor([[1.0, 1.0, -1.0]])
    loss, clipped = ppo_math.clipped_policy_loss(
        ratios.log(), torch.zeros(1, 3), advantages, torch.ones(1, 3), clip_range=0.2
    )
    # max(-1.5, -1.2) = -1.2 (clipped); max(-0.5, -0.8) = -0.5; max(1, 1) = 1
    assert loss.item() == pytest.approx((-1.2 - 0.5 + 1.0) / 3, rel=1e-6)
    assert clipped.item() == pytest.approx(1 / 3)


def test_clipped_value_loss_by_hand_ignores_masked_tokens():
    values = torch.tensor([[1.0, 0.0, 50.0]])
    old_values = torch.tensor([[0.5, 0.0, 0.0]])
    returns = torch.tensor([[2.0, 1.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    loss, clipped = ppo_math.clipped_value_loss(values, old_values, returns, mask, clip_range=0.2)
    # token 1: clipped value 0.7 -> (0.7 - 2)^2 = 1.69 > (1 - 2)^2; token 2: both 1
    assert loss.item() == pytest.approx(0.5 * (1.69 + 1.0) / 2, rel=1e-6)
    assert clipped.item() == pytest.approx(0.5)


def test_whitening_over_masked_entries():
    values = torch.tensor([[2.0, 4.0, 6.0, 100.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    # mean 4, unbiased variance (4 + 0 + 4) / 2 = 4
    close(ppo_math.masked_whiten(values, mask), [[-1.0, 0.0, 1.0, 0.0]])
    close(ppo_math.masked_whiten(values, mask, shift_mean=False), [[3.0, 4.0, 5.0, 0.0]])


def test_adaptive_kl_controller_moves_towards_the_target_by_at_most_20_percent():
    control = ppo_math.AdaptiveKLController(value=0.2, target=6.0, horizon=10_000)
    control.update(current_kl=9.0, examples=1_000)  # 50% over, clipped to 20%: x (1 + 0.02)
    assert control.value == pytest.approx(0.204)
    control.update(current_kl=3.0, examples=1_000)  # under: x (1 - 0.02)
    assert control.value == pytest.approx(0.204 * 0.98)
    control.update(current_kl=6.6, examples=10_000)  # 10% over for a whole horizon
    assert control.value == pytest.approx(0.204 * 0.98 * 1.1)


def test_running_moments_merge_batches_like_one():
    moments = ppo_math.RunningMoments()
    moments.update(torch.tensor([1.0, 2.0, 3.0]))
    moments.update(torch.tensor([4.0, 5.0]))
    assert moments.mean == pytest.approx(3.0)
    assert moments.std == pytest.approx(math.sqrt(2.5))  # unbiased std of 1..5
    normalised = moments.normalise(torch.tensor([3.0, 3.0 + math.sqrt(2.5)]))
    assert normalised.tolist() == pytest.approx([0.0, 1.0], abs=1e-6)


def test_responses_end_at_their_first_stop_token_which_they_keep():
    assert until_stop([5, 7, 2, 9, 2], {2, 3}) == [5, 7, 2]
    assert until_stop([5, 7, 9], {2}) == [5, 7, 9]
