"""GRPO, all in one place: which groups train, their advantages, and the per-token loss.

For completion i of a prompt's group and each of its response tokens t:

    A_i      = (r_i - mean(r)) / (std(r) + eps)                   (same for every token of i)
    rho_it   = exp(logp_it - old_logp_it)                         (1 on the first update)
    w_it     = min(exp(old_logp_it - sampler_logp_it), cap)       (truncated IS, optional)
    l_it     = -w_it * min(rho_it A_i, clip(rho_it, 1 - clip_low, 1 + clip_high) A_i)
               + kl_coef * k3(ref_logp_it, logp_it) - entropy_coef * H_it
    loss     = sum_it m_it l_it / sum_it m_it                     (token-level, whole global batch)

m_it is 0 for prompt and padding positions and for completions cut at the length limit when
overlong filtering is on. `std` has Bessel's correction (as veRL's GRPO). The functions here
take plain tensors so a test can check them against a hand-written reference.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from proto.judge import REWARDED_STATUSES, UNJUDGED_STATUSES
from proto.rollout import RolloutGroup


def group_advantages(rewards: np.ndarray, eps: float) -> np.ndarray:
    """(r - mean) / (std + eps) over one group; a group without spread gets exactly 0."""
    r = np.asarray(rewards, dtype=np.float64)
    if r.size < 2 or np.all(r == r[0]):
        return np.zeros(r.shape, dtype=np.float32)
    return ((r - r.mean()) / (r.std(ddof=1) + eps)).astype(np.float32)


def is_unjudged(group: RolloutGroup) -> bool:
    """A verdict that could not be obtained says nothing about the response: never reward 0."""
    return any(c.judge_status in UNJUDGED_STATUSES for c in group.completions)


def is_zero_variance(group: RolloutGroup) -> bool:
    rewards = [c.reward for c in group.completions]
    return all(r == rewards[0] for r in rewards)


Worth = Literal["unjudged", "zero_variance", "signal"]


def screen(group: RolloutGroup) -> Worth:
    """What a returned group is worth to training. Each group is screened once, where it enters a
    batch: by the work ledger as it arrives from a generator (which can issue its prompt again),
    or by `select_groups` for batches read from a file or sampled in-process."""
    if is_unjudged(group):
        return "unjudged"
    return "zero_variance" if is_zero_variance(group) else "signal"


@dataclass
class Batch:
    """The groups of one step. `trained` carry gradient; `left_out` were judged but carry no
    signal (zero variance) and were dropped, yet their completions still count in the step's
    reward, accuracy and length figures; `unjudged` groups were dropped for a missing verdict."""

    trained: list[RolloutGroup]
    left_out: list[RolloutGroup] = field(default_factory=list)
    unjudged: int = 0

    def __post_init__(self) -> None:
        for group in self.trained:
            if is_unjudged(group):
                raise ValueError(f"rollout_group {group.work_id}: a verdict is missing; it cannot train")

    @property
    def groups(self) -> list[RolloutGroup]:
        """Every judged group of the step, trained or left out."""
        return self.trained + self.left_out

    @property
    def temperature(self) -> float:
        """The temperature the step's log-probabilities are taken at: the one every group was
        sampled at, or 1 for greedy groups (temperature 0), whose tokens train as plain samples."""
        temperatures = {group.temperature for group in self.groups}
        if len(temperatures) > 1:
            raise ValueError(
                f"a batch sampled at temperatures {sorted(temperatures)}: one step takes log-probabilities "
                "at one temperature, so every group of a batch must have been sampled at the same one"
            )
        temperature = temperatures.pop() if temperatures else 1.0
        return temperature if temperature > 0 else 1.0


def select_groups(groups: Sequence[RolloutGroup], *, drop_zero_variance: bool) -> Batch:
    """The batch of groups that did not come through the work ledger (a file, the demo)."""
    batch = Batch(trained=[])
    for group in groups:
        worth = screen(group)
        if worth == "unjudged":
            batch.unjudged += 1
        elif worth == "zero_variance" and drop_zero_variance:
            batch.left_out.append(group)
        else:
            batch.trained.append(group)
    return batch


def advantages(groups: Sequence[RolloutGroup], eps: float) -> list[np.ndarray]:
    """One array per group: each completion's group-normalised reward."""
    return [group_advantages(np.array([c.reward for c in group.completions]), eps) for group in groups]


def is_correct(status: str) -> bool:
    return status in REWARDED_STATUSES


def clipped_policy_loss(
    logp: Tensor, old_logp: Tensor, advantages: Tensor, clip_low: float, clip_high: float
) -> Tensor:
    """Per-token PPO surrogate (to minimise). With old_logp = logp.detach() it is -A * logp in value
    of the gradient: plain REINFORCE with the group-normalised reward."""
    ratio = torch.exp(logp - old_logp)
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high) * advantages
    return -torch.minimum(unclipped, clipped)


def truncated_is_weights(old_logp: Tensor, sampler_logp: Tensor, cap: float) -> Tensor:
    """min(pi_learner / pi_sampler, cap) per token, without gradient: corrects for the sampler
    (e.g. vLLM kernels) not computing exactly the learner's distribution."""
    return torch.clamp(torch.exp(old_logp - sampler_logp), max=cap).detach()


def kl_k3(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """Per-token k3 estimate of KL(pi || pi_ref) from tokens sampled by pi: unbiased, >= 0."""
    delta = ref_logp - logp
    return torch.exp(delta) - delta - 1.0


def token_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    *,
    clip_low: float,
    clip_high: float,
    sampler_logp: Tensor | None = None,
    tis_cap: float | None = None,
    ref_logp: Tensor | None = None,
    kl_coef: float = 0.0,
    entropy: Tensor | None = None,
    entropy_coef: float = 0.0,
) -> Tensor:
    """The per-token loss l_it of the module docstring (unmasked, unnormalised)."""
    loss = clipped_policy_loss(logp, old_logp, advantages, clip_low, clip_high)
    if tis_cap is not None:
        if sampler_logp is None:
            raise ValueError("tis_cap: truncated importance sampling needs the sampler's logprobs")
        loss = loss * truncated_is_weights(old_logp, sampler_logp, tis_cap)
    if kl_coef > 0:
        if ref_logp is None:
            raise ValueError("kl_coef: a KL penalty needs the reference model's logprobs")
        loss = loss + kl_coef * kl_k3(logp, ref_logp)
    if entropy_coef > 0:
        if entropy is None:
            raise ValueError("entropy_coef: an entropy bonus needs the entropy with its gradient")
        loss = loss - entropy_coef * entropy
    return loss


def logprob_mismatch(learner_logp: Tensor, sampler_logp: Tensor, mask: Tensor) -> dict[str, Tensor]:
    """Sums over masked tokens of |delta| and of the k3 estimate of KL(sampler || learner), and the
    max |delta|; the caller divides the sums by the token count of the whole batch."""
    delta = (learner_logp - sampler_logp) * mask
    abs_delta = delta.abs()
    # k3 with the sampler as the sampling policy: r = pi_learner / pi_sampler.
    kl = (torch.exp(delta) - delta - 1.0) * mask
    return {
        "abs_sum": abs_delta.sum(),
        "max": abs_delta.max() if abs_delta.numel() else abs_delta.new_zeros(()),
        "kl_sum": kl.sum(),
    }
