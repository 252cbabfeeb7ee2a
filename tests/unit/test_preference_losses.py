"""Preference losses against closed forms computed by hand, at extreme margins in fp32, bf16
and fp16, and in the direction of their gradients."""

from __future__ import annotations

import math

import pytest
import torch

from tuneforge.training.preference_losses import (
    DPOOptions,
    dpo_loss,
    hinge_loss,
    ipo_loss,
    kto_kl,
    kto_loss,
    ld_weights,
    log1m_exp,
    orpo_loss,
    sigmoid_loss,
    simpo_loss,
)

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def softplus(x: float) -> float:
    """-log(sigmoid(-x)) = log(1 + e^x), written out for the expected values."""
    return math.log1p(math.exp(x))


def t(*values: float, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.tensor(values, dtype=dtype)


# policy: chosen -1, rejected -3; reference: both -2. Log-ratios +1 and -1: Delta = 2.
POLICY, REFERENCE, COUNTS = t(-1.0, -3.0), t(-2.0, -2.0), torch.tensor([1, 1])


def test_sigmoid_is_dpo_and_label_smoothing_is_cdpo():
    plain = dpo_loss(POLICY, REFERENCE, COUNTS, DPOOptions("sigmoid", beta=0.5))
    assert plain.losses.item() == pytest.approx(softplus(-1.0))  # -log sigmoid(0.5 * 2)
    smoothed = dpo_loss(POLICY, REFERENCE, COUNTS, DPOOptions("sigmoid", 0.5, label_smoothing=0.2))
    assert smoothed.losses.item() == pytest.approx(0.8 * softplus(-1.0) + 0.2 * softplus(1.0))
    assert plain.chosen_rewards.item() == pytest.approx(0.5)  # beta * (+1)
    assert plain.rejected_rewards.item() == pytest.approx(-0.5)


def test_hinge_is_zero_beyond_the_margin_and_linear_inside_it():
    assert hinge_loss(t(1.0), t(-1.0), beta=0.5).item() == 0.0  # 1 - 0.5 * 2
    assert hinge_loss(t(0.25), t(0.0), beta=2.0).item() == pytest.approx(0.5)  # 1 - 2 * 0.25
    loss = dpo_loss(t(-1.0, -1.0), t(-1.0, -1.0), COUNTS, DPOOptions("hinge", beta=0.5))
    assert loss.losses.item() == pytest.approx(1.0)


def test_ipo_regresses_the_per_token_margin_onto_half_inverse_beta():
    # sums / counts: policy chosen -4/2 = -2, rejected -6/3 = -2; reference -6/2 = -3, -3/3 = -1
    # averaged log-ratios +1 and -1: Delta = 2; beta 0.5: (2 - 1)^2
    policy, reference, counts = t(-4.0, -6.0), t(-6.0, -3.0), torch.tensor([2, 3])
    loss = dpo_loss(policy, reference, counts, DPOOptions("ipo", beta=0.5))
    assert loss.losses.item() == pytest.approx(1.0)
    assert loss.chosen_rewards.item() == pytest.approx(0.5)
    assert ipo_loss(t(1.0), t(-1.0), beta=0.25).item() == pytest.approx(0.0)


def test_orpo_adds_the_odds_ratio_term_to_the_chosen_nll():
    # p_w = 0.5 (odds 1), p_l = 0.25 (odds 1/3): log odds ratio = log 3
    expected = math.log(2) + 0.1 * math.log1p(1 / 3)  # -log p_w + beta * -log sigmoid(log 3)
    loss = orpo_loss(t(math.log(0.5)), t(math.log(0.25)), beta=0.1)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    # through dpo_loss: summed log-probs over 2 and 4 tokens average to the same values
    summed = t(2 * math.log(0.5), 4 * math.log(0.25))
    pairs = dpo_loss(summed, None, torch.tensor([2, 4]), DPOOptions("orpo", beta=0.1))
    assert pairs.losses.item() == pytest.approx(expected, rel=1e-6)
    assert pairs.chosen_rewards.item() == pytest.approx(0.1 * math.log(0.5))


def test_simpo_subtracts_its_target_margin():
    # beta 2, averages -1 and -2, gamma 0.5: -log sigmoid(2 * 1 - 0.5)
    assert simpo_loss(t(-1.0), t(-2.0), beta=2.0, gamma=0.5).item() == pytest.approx(softplus(-1.5))
    pairs = dpo_loss(t(-3.0, -8.0), None, torch.tensor([3, 4]), DPOOptions("simpo", 2.0, 0, 0.5))
    assert pairs.losses.item() == pytest.approx(softplus(-1.5))
    assert pairs.rejected_rewards.item() == pytest.approx(-4.0)  # beta * average


def test_ftx_adds_the_chosen_side_per_token_nll():
    counts = torch.tensor([4, 1])
    plain = dpo_loss(POLICY, REFERENCE, counts, DPOOptions("sigmoid", beta=0.5))
    mixed = dpo_loss(POLICY, REFERENCE, counts, DPOOptions("sigmoid", beta=0.5, ftx=2.0))
    assert (mixed.losses - plain.losses).item() == pytest.approx(2.0 * 1.0 / 4)


def test_losses_that_compare_to_a_reference_need_one():
    for loss in ("sigmoid", "hinge", "ipo"):
        with pytest.raises(ValueError, match=loss):
            dpo_loss(POLICY, None, COUNTS, DPOOptions(loss))


def test_kto_loss_and_kl_by_hand():
    # mismatched pairs: log-ratios +1 and 0 -> KL estimate 0.5
    kl = kto_kl(t(-1.0, -1.0), t(-2.0, -1.0))
    assert kl.item() == pytest.approx(0.5)
    assert kto_kl(t(-3.0), t(-1.0)).item() == 0.0  # clamped at 0
    doubled = kto_kl(t(-1.0, -1.0), t(-2.0, -1.0), sum_across_processes=lambda x: 2 * x)
    assert doubled.item() == pytest.approx(0.5)  # two processes with the same values
    # desirable: ratio 0.5, undesirable: ratio -0.5; beta 1, weights 2 and 0.5
    losses, rewards = kto_loss(
        t(-1.0, -2.0), t(-1.5, -1.5), torch.tensor([True, False]), kl, 1.0, 2.0, 0.5
    )
    sigmoid = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    assert losses.tolist() == pytest.approx([2.0 * sigmoid(0.0), 0.5 * sigmoid(-1.0)])
    assert rewards.tolist() == pytest.approx([0.5, -0.5])


def test_kl_estimate_carries_no_gradient():
    policy_kl = t(-1.0, -2.0).requires_grad_()
    assert not kto_kl(policy_kl, t(-3.0, -3.0)).requires_grad


def test_ld_weights_count_the_verbose_tail_alpha_times():
    # pair 0: chosen 2 tokens, rejected 3 (shared 2); pair 1: chosen 4, rejected 1 (shared 1)
    owner = torch.tensor([0, 0, 1, 1, 1, 1, 2, 2, 2, 3])
    weights = ld_weights(owner, num_sequences=4, alpha=0.3)
    a = 0.3
    assert weights.tolist() == pytest.approx([1, 1, 1, a, a, a, 1, 1, a, 1])


def test_log1m_exp_is_accurate_at_both_ends():
    x = torch.tensor([-1e-5, -0.1, -2.0, -50.0, -1e4, 0.0])
    values = log1m_exp(x)
    assert torch.isfinite(values).all()
    assert values[0].item() == pytest.approx(math.log(-math.expm1(-1e-5)), rel=1e-4)
    assert values[2].item() == pytest.approx(math.log1p(-math.exp(-2.0)))
    assert values[4].item() == 0.0


# --- extreme margins ------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("loss", ["sigmoid", "hinge", "ipo", "orpo", "simpo"])
@pytest.mark.parametrize("margin", [1e4, -1e4])
def test_dpo_family_stays_finite_at_extreme_margins(loss, dtype, margin):
    # policy chosen/rejected log-probs, one token each (averages == sums), margin m
    policy = torch.tensor([-1.0 if margin > 0 else -1.0 - abs(margin), -1.0 - max(margin, 0.0)])
    policy = policy.to(dtype).requires_grad_()
    reference = torch.tensor([-1.0, -1.0], dtype=dtype)
    pairs = dpo_loss(policy, reference, torch.tensor([1, 1]), DPOOptions(loss, beta=0.1))
    pairs.losses.sum().backward()
    assert torch.isfinite(pairs.losses).all()
    assert torch.isfinite(policy.grad.float()).all()
    assert torch.isfinite(pairs.chosen_rewards).all()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_sigmoid_values_at_extreme_margins(dtype):
    ratios = torch.tensor([1e4, -1e4], dtype=dtype)
    zero = torch.zeros(2, dtype=dtype)
    scaled = 0.1 * ratios[0].item()  # 1e4 as the dtype holds it (bf16: 9984), times beta
    losses = sigmoid_loss(ratios, zero, beta=0.1)
    assert losses[0].item() == pytest.approx(0.0, abs=1e-30)  # certain preference: no loss
    assert losses[1].item() == pytest.approx(scaled, rel=1e-6)  # -log sigmoid(-x) = x here
    smoothed = sigmoid_loss(ratios, zero, beta=0.1, label_smoothing=0.1)
    assert torch.isfinite(smoothed).all()
    assert smoothed[0].item() == pytest.approx(0.1 * scaled, rel=1e-6)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_orpo_finite_for_probabilities_of_zero_and_one(dtype):
    chosen = torch.tensor([0.0, -1e-9, -1e4, -1e4], dtype=dtype).requires_grad_()
    rejected = torch.tensor([-1e4, -1e4, 0.0, -1e-9], dtype=dtype)
    losses = orpo_loss(chosen, rejected, beta=0.1)
    losses.sum().backward()
    assert torch.isfinite(losses).all()
    assert torch.isfinite(chosen.grad.float()).all()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("ratio", [1e4, -1e4])
def test_kto_stays_finite_at_extreme_ratios(dtype, ratio):
    policy = torch.tensor([ratio, ratio], dtype=dtype).requires_grad_()
    reference = torch.zeros(2, dtype=dtype)
    kl = kto_kl(torch.tensor([ratio], dtype=dtype), torch.zeros(1, dtype=dtype))
    losses, rewards = kto_loss(policy, reference, torch.tensor([True, False]), kl, 0.1)
    losses.sum().backward()
    assert torch.isfinite(losses).all() and torch.isfinite(rewards).all()
    assert torch.isfinite(policy.grad.float()).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_half_precision_inputs_give_the_float32_result(dtype):
    policy, reference = t(-12.5, -30.25, dtype=dtype), t(-14.0, -29.0, dtype=dtype)
    half = dpo_loss(policy, reference, COUNTS, DPOOptions("sigmoid", beta=0.1))
    full = dpo_loss(policy.float(), reference.float(), COUNTS, DPOOptions("sigmoid", beta=0.1))
    assert half.losses.dtype == torch.float32
    assert half.losses.item() == full.losses.item()


# --- gradient direction ---------------------------------------------------------------------


@pytest.mark.parametrize("loss", ["sigmoid", "hinge", "ipo", "orpo", "simpo"])
def test_raising_the_chosen_log_prob_lowers_the_loss(loss):
    # a small margin: inside the active region of hinge and ipo
    policy = t(-2.0, -2.1).requires_grad_()
    reference = t(-2.0, -2.0)
    options = DPOOptions(loss, beta=0.1)
    dpo_loss(policy, reference, torch.tensor([1, 1]), options).losses.sum().backward()
    assert policy.grad[0] < 0, "more chosen probability must lower the loss"
    assert policy.grad[1] > 0, "more rejected probability must raise the loss"
    # and a step along the gradient does lower it
    before = dpo_loss(policy.detach(), reference, torch.tensor([1, 1]), options).losses
    after = dpo_loss(policy.detach() - 0.1 * policy.grad, reference, torch.tensor([1, 1]), options)
    assert after.losses.item() < before.item()


def test_kto_pushes_desirable_up_and_undesirable_down():
    policy = t(-2.0, -2.0).requires_grad_()
    losses, _ = kto_loss(policy, t(-2.0, -2.0), torch.tensor([True, False]), torch.tensor(0.0), 0.1)
    losses.sum().backward()
    assert policy.grad[0] < 0  # desirable: raising its log-prob lowers the loss
    assert policy.grad[1] > 0  # undesirable: raising it raises the loss
