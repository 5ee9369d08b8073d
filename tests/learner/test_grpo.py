"""GRPO's pieces as plain functions: advantages, group selection, the per-token loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from learner.training.grpo import (
    Batch,
    advantages,
    clipped_policy_loss,
    group_advantages,
    kl_k3,
    logprob_mismatch,
    screen,
    select_groups,
    token_loss,
    truncated_is_weights,
)
from proto.rollout import RolloutGroup
from tests.learner.rollouts import completion, group, mixed_batch


def test_advantages_by_hand() -> None:
    adv = group_advantages(np.array([1.0, 0.0, 0.0, 1.0]), eps=0.0)
    # mean 0.5, Bessel-corrected std sqrt(1/3)
    np.testing.assert_allclose(adv, [0.8660254, -0.8660254, -0.8660254, 0.8660254], rtol=1e-6)
    assert group_advantages(np.array([1.0, 1.0, 1.0]), eps=1e-6).tolist() == [0.0, 0.0, 0.0]
    assert group_advantages(np.array([0.3]), eps=1e-6).tolist() == [0.0]
    better = group_advantages(np.array([0.0, 0.5, 1.0]), eps=1e-6)
    assert better[2] > better[1] > better[0] and abs(float(better.sum())) < 1e-6


def test_selection_counts_and_drops() -> None:
    groups = mixed_batch()
    kept = select_groups(groups, drop_zero_variance=True)
    assert kept.unjudged == 1 and [g.work_id for g in kept.left_out] == ["c-all-right", "d-all-wrong"]
    assert [g.work_id for g in kept.trained] == ["a", "b", "f"]
    assert len(kept.groups) == 5
    flat = select_groups(groups, drop_zero_variance=False)
    assert [g.work_id for g in flat.trained] == ["a", "b", "c-all-right", "d-all-wrong", "f"]
    assert flat.left_out == [] and flat.unjudged == 1
    assert all(float(np.abs(a).max()) == 0.0 for a in advantages(flat.trained, eps=1e-6)[2:4])


def test_unjudged_group_is_never_trained_even_with_signal() -> None:
    g = group(
        "x", [1, 2], [completion([3], 1.0), completion([4], 0.0), completion([5], 0.0, status="timeout")]
    )
    sel = select_groups([g], drop_zero_variance=False)
    assert sel.trained == [] and sel.unjudged == 1 and sel.groups == []
    assert screen(g) == "unjudged"
    with pytest.raises(ValueError, match="rollout_group x: a verdict is missing"):
        Batch(trained=[g])  # nothing reaches the trainer around the screen


def test_a_batch_trains_at_the_temperature_its_groups_were_sampled_at() -> None:
    def at(temperature: float, name: str = "g") -> RolloutGroup:
        return group(name, [1], [completion([2], 1.0), completion([3], 0.0)], temperature=temperature)

    assert Batch(trained=[at(0.6), at(0.6, "h")]).temperature == 0.6
    assert Batch(trained=[at(0.0)]).temperature == 1.0  # greedy samples train as plain samples
    with pytest.raises(ValueError, match=r"temperatures \[0.6, 1.0\]"):
        _ = Batch(trained=[at(0.6)], left_out=[at(1.0, "h")]).temperature


def test_on_policy_loss_is_reinforce() -> None:
    logp = torch.tensor([-1.0, -2.0, -0.5], requires_grad=True)
    adv = torch.tensor([1.5, -0.5, 2.0])
    loss = clipped_policy_loss(logp, logp.detach(), adv, 0.2, 0.2)
    torch.testing.assert_close(loss.detach(), -adv)  # ratio 1
    loss.sum().backward()
    torch.testing.assert_close(logp.grad, -adv)  # d/dlogp of -A * exp(logp - old) at logp = old


def test_clipping_stops_the_gradient_outside_the_trust_region() -> None:
    old = torch.zeros(4)
    logp = torch.log(torch.tensor([1.5, 1.1, 0.5, 0.9])).requires_grad_()
    adv = torch.tensor([1.0, 1.0, -1.0, -1.0])
    loss = clipped_policy_loss(logp, old, adv, clip_low=0.2, clip_high=0.2)
    torch.testing.assert_close(loss.detach(), torch.tensor([-1.2, -1.1, 0.8, 0.9]))
    loss.sum().backward()
    # clipped (ratio 1.5 with A > 0, ratio 0.5 with A < 0): no gradient; inside: -A * ratio
    torch.testing.assert_close(logp.grad, torch.tensor([0.0, -1.1, 0.0, 0.9]))


def test_truncated_is_weights_and_kl() -> None:
    old = torch.tensor([-1.0, -1.0, -1.0])
    sampler = torch.tensor([-1.0, -3.0, 0.0])
    torch.testing.assert_close(
        truncated_is_weights(old, sampler, cap=2.0), torch.tensor([1.0, 2.0, float(np.exp(-1.0))])
    )
    logp = torch.tensor([-1.0, -2.0, -0.1])
    ref = torch.tensor([-1.0, -1.0, -3.0])
    kl = kl_k3(logp, ref)
    assert float(kl[0]) == 0.0 and bool((kl[1:] > 0).all())
    with pytest.raises(ValueError, match="tis_cap"):
        token_loss(logp, logp, old, clip_low=0.2, clip_high=0.2, tis_cap=2.0)
    with pytest.raises(ValueError, match="kl_coef"):
        token_loss(logp, logp, old, clip_low=0.2, clip_high=0.2, kl_coef=0.1)


def test_mismatch_sums_over_masked_tokens() -> None:
    learner = torch.tensor([[-1.0, -2.0, -9.0]])
    sampler = torch.tensor([[-1.5, -1.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    m = logprob_mismatch(learner, sampler, mask)
    assert float(m["abs_sum"]) == pytest.approx(1.5)
    assert float(m["max"]) == pytest.approx(1.0)
    expected_kl = (np.exp(0.5) - 0.5 - 1) + (np.exp(-1.0) + 1.0 - 1)
    assert float(m["kl_sum"]) == pytest.approx(expected_kl, rel=1e-6)
