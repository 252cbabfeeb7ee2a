"""Preference losses as pure functions of log-probabilities.

Inputs are per-sequence log-probabilities of the response tokens (sums, as
`training/loss.py: sequence_log_probs` returns them) and, where a loss needs them, token counts.
Every function computes in float32, whatever the dtype of its inputs, and goes through
`logsigmoid` / `softplus`, never `log(sigmoid(x))`, so margins of +-1e4 stay finite.

DPO family (`pref_loss`), with Delta = (log pi(y_w) - log ref(y_w)) - (log pi(y_l) - log ref(y_l)):

- sigmoid (DPO; cDPO with label smoothing e): (1 - e) * -logsigmoid(beta * Delta)
  + e * -logsigmoid(-beta * Delta)
- hinge (SLiC): relu(1 - beta * Delta)
- ipo: (Delta_avg - 1 / (2 * beta))^2, with per-token average log-probabilities
- orpo (reference-free): -avg log pi(y_w) + beta * -logsigmoid(log odds(y_w) - log odds(y_l)),
  odds(y) = p / (1 - p) of the average log-probability p
- simpo (reference-free): -logsigmoid(beta * (avg log pi(y_w) - avg log pi(y_l)) - gamma)

Rewards are beta times the log-ratios the loss compares (beta times the average log-probs for
orpo and simpo), as LLaMA-Factory and TRL report them.

KTO: with z = mean over the batch of the mismatched pairs' log-ratios, clamped at 0 and never
differentiated, a desirable example costs w_d * sigmoid(-beta * (log-ratio - z)), an undesirable
one w_u * sigmoid(-beta * (z - log-ratio)).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from tuneforge.config.finetuning import REFERENCE_FREE  # noqa: F401 - declared beside pref_loss

DPO_LOSSES = ("sigmoid", "hinge", "ipo", "orpo", "simpo")
AVERAGED = ("ipo", "orpo", "simpo")  # these compare per-token average log-probabilities


@dataclass(frozen=True)
class DPOOptions:
    """The DPO-family keys of a config: pref_loss, pref_beta, dpo_label_smoothing,
    simpo_gamma, pref_ftx."""

    loss: str = "sigmoid"
    beta: float = 0.1
    label_smoothing: float = 0.0
    simpo_gamma: float = 0.5
    ftx: float = 0.0


@dataclass(frozen=True)
class PairLosses:
    """Per-pair losses (to be averaged) and the rewards of each side."""

    losses: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor


def sigmoid_loss(
    chosen_logratios: torch.Tensor,
    rejected_logratios: torch.Tensor,
    beta: float,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """DPO (Rafailov et al. 2023); with label smoothing, conservative DPO (cDPO)."""
    logits = beta * (chosen_logratios.float() - rejected_logratios.float())
    return -(1 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)


def hinge_loss(
    chosen_logratios: torch.Tensor, rejected_logratios: torch.Tensor, beta: float
) -> torch.Tensor:
    """SLiC's hinge on the scaled margin."""
    return torch.relu(1 - beta * (chosen_logratios.float() - rejected_logratios.float()))


def ipo_loss(
    chosen_logratios: torch.Tensor, rejected_logratios: torch.Tensor, beta: float
) -> torch.Tensor:
    """IPO (Azar et al. 2023): the margin regressed onto 1 / (2 beta); pass averaged log-ratios."""
    return (chosen_logratios.float() - rejected_logratios.float() - 1 / (2 * beta)) ** 2


def log1m_exp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, accurate near 0 and for very negative x (Maechler 2012)."""
    x = x.float().clamp(max=-1e-6)  # a probability of exactly 1 has no finite odds
    return torch.where(x > -0.6931, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def orpo_loss(chosen_avg: torch.Tensor, rejected_avg: torch.Tensor, beta: float) -> torch.Tensor:
    """ORPO (Hong et al. 2024): the chosen side's NLL plus beta times the odds-ratio loss.

    Args:
        chosen_avg: per-token average log-probabilities of the chosen responses.
        rejected_avg: the same for the rejected responses.
        beta: weight of the odds-ratio term.
    """
    chosen_avg, rejected_avg = chosen_avg.float(), rejected_avg.float()
    log_odds = (chosen_avg - rejected_avg) - (log1m_exp(chosen_avg) - log1m_exp(rejected_avg))
    return -chosen_avg - beta * F.logsigmoid(log_odds)


def simpo_loss(
    chosen_avg: torch.Tensor, rejected_avg: torch.Tensor, beta: float, gamma: float
) -> torch.Tensor:
    """SimPO (Meng et al. 2024): length-normalised margin with a target margin gamma."""
    return -F.logsigmoid(beta * (chosen_avg.float() - rejected_avg.float()) - gamma)


def dpo_loss(
    policy: torch.Tensor,
    reference: torch.Tensor | None,
    counts: torch.Tensor,
    options: DPOOptions,
) -> PairLosses:
    """The DPO-family loss of n pairs, with the SFT term of `pref_ftx` mixed in.

    Args:
        policy: summed response log-probabilities of the policy, [2n]: the n chosen sides,
            then the n rejected sides.
        reference: the same under the reference model, or None for orpo and simpo.
        counts: response tokens of each sequence, [2n].
        options: loss type and its hyper-parameters.

    Returns:
        Per-pair losses and rewards.
    """
    counts = counts.clamp(min=1).float()
    policy = sums = policy.float()
    if options.loss in AVERAGED:
        policy = policy / counts
    chosen, rejected = policy.chunk(2)
    beta = options.beta
    if options.loss == "orpo":
        losses = orpo_loss(chosen, rejected, beta)
        chosen_rewards, rejected_rewards = beta * chosen, beta * rejected
    elif options.loss == "simpo":
        losses = simpo_loss(chosen, rejected, beta, options.simpo_gamma)
        chosen_rewards, rejected_rewards = beta * chosen, beta * rejected
    else:
        if reference is None:
            raise ValueError(f"pref_loss {options.loss} needs reference log-probabilities")
        reference = reference.float()
        if options.loss in AVERAGED:
            reference = reference / counts
        ref_chosen, ref_rejected = reference.chunk(2)
        chosen_ratios, rejected_ratios = chosen - ref_chosen, rejected - ref_rejected
        if options.loss == "sigmoid":
            losses = sigmoid_loss(chosen_ratios, rejected_ratios, beta, options.label_smoothing)
        elif options.loss == "hinge":
            losses = hinge_loss(chosen_ratios, rejected_ratios, beta)
        elif options.loss == "ipo":
            losses = ipo_loss(chosen_ratios, rejected_ratios, beta)
        else:
            raise ValueError(f"unknown pref_loss {options.loss!r}; choose from {DPO_LOSSES}")
        chosen_rewards, rejected_rewards = beta * chosen_ratios, beta * rejected_ratios
    if options.ftx > 0:
        losses = losses + options.ftx * sft_term(sums.chunk(2)[0], counts.chunk(2)[0])
    return PairLosses(losses, chosen_rewards.detach(), rejected_rewards.detach())


def ld_weights(owner: torch.Tensor, num_sequences: int, alpha: float) -> torch.Tensor:
    """Per-token weights of LD-DPO (Length Desensitization, Liu et al. 2024).

    For a pair whose responses have l_w and l_l tokens, the shared length is l_p = min(l_w, l_l).
    A response's log-probability becomes

        log pi_hat(y) = sum_{t <= l_p} log pi(y_t | ...) + alpha * sum_{t > l_p} log pi(y_t | ...)

    i.e. the verbose part beyond the shorter response's length counts alpha times. Applied to
    the policy and the reference alike (as TRL does; LLaMA-Factory weights the policy only).

    Args:
        owner: for each response token (in row order), the index of its sequence; sequence i
            and i + num_sequences / 2 are the two sides of a pair.
        num_sequences: sequences in the row (2n).
        alpha: weight of the tokens beyond the shared length.

    Returns:
        A float weight per token: 1 within the shared length, alpha beyond it.
    """
    counts = torch.bincount(owner, minlength=num_sequences)
    shared = torch.minimum(*counts.chunk(2)).repeat(2)
    starts = counts.cumsum(0) - counts
    rank = torch.arange(owner.numel(), device=owner.device) - starts[owner]
    ones = torch.ones(owner.numel(), device=owner.device)
    return torch.where(rank < shared[owner], ones, torch.full_like(ones, alpha))


def kto_kl(
    policy_kl_logps: torch.Tensor,
    reference_kl_logps: torch.Tensor,
    sum_across_processes: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """KTO's reference point: the mean log-ratio of mismatched (prompt, response) pairs over
    the batch (of all processes, when `sum_across_processes` all-reduces a sum), clamped at 0
    and detached: it estimates KL(pi || ref) and is not itself trained."""
    ratios = (policy_kl_logps.float() - reference_kl_logps.float()).detach()
    totals = torch.stack([ratios.sum(), ratios.new_tensor(float(ratios.numel()))])
    if sum_across_processes is not None:
        totals = sum_across_processes(totals)
    return (totals[0] / totals[1].clamp(min=1)).clamp(min=0)


def kto_loss(
    policy: torch.Tensor,
    reference: torch.Tensor,
    desirable: torch.Tensor,
    kl: torch.Tensor,
    beta: float,
    chosen_weight: float = 1.0,
    rejected_weight: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """KTO (Ethayarajh et al. 2024, eq. 7) for examples labelled desirable or undesirable.

    Args:
        policy: summed response log-probabilities of the policy, [n].
        reference: the same under the reference model, [n].
        desirable: bool [n], the kto_tag of each example.
        kl: the reference point from `kto_kl` (a scalar, no gradient).
        beta: pref_beta.
        chosen_weight: kto_chosen_weight, for desirable examples.
        rejected_weight: kto_rejected_weight, for undesirable examples.

    Returns:
        (losses [n], rewards [n]); rewards are beta times the log-ratios.
    """
    ratios = policy.float() - reference.float()
    kl = kl.float()
    # 1 - sigmoid(x) == sigmoid(-x): no cancellation for large x
    chosen = chosen_weight * torch.sigmoid(-beta * (ratios - kl))
    rejected = rejected_weight * torch.sigmoid(-beta * (kl - ratios))
    losses = torch.where(desirable.bool(), chosen, rejected)
    return losses, (beta * ratios).detach()


def sft_term(policy: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Per-token negative log-likelihood of each sequence (the `pref_ftx` term)."""
    return -policy.float() / counts.clamp(min=1).float()
