"""The on-policy clock: the admission rule, a step that trains no token, and a checkpoint round trip."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from learner.config import LearnerConfig
from learner.on_policy import OnPolicyClock
from learner.training.grpo import select_groups
from learner.training.trainer import Learner
from tests.learner.rollouts import mixed_batch


def test_step_v_admits_versions_v_minus_staleness_to_v() -> None:
    strict, loose = OnPolicyClock(), OnPolicyClock(max_staleness=2)
    for clock in (strict, loose):
        for _ in range(5):
            clock.take()
            clock.finish()
    assert strict.next_step == loose.next_step == 5
    assert [v for v in range(8) if strict.admits(v)] == [5]
    assert [v for v in range(8) if loose.admits(v)] == [3, 4, 5]
    assert [v for v in range(8) if loose.admits(v, step=1)] == [
        0,
        1,
    ]  # a sample never trains before its version


def test_the_counters_of_one_step() -> None:
    clock = OnPolicyClock()
    assert clock.take() == 0  # the batch of step 0 is handed out
    assert (clock.next_step, clock.version, clock.published) == (1, 0, 0)
    assert not clock.admits(0)  # version 0 is too old for step 1: its leases are cancelled
    assert clock.finish() == 1  # trained or not, the step is done
    clock.publish(1)
    assert (clock.next_step, clock.version, clock.published) == (1, 1, 1) and clock.is_current(1)
    with pytest.raises(ValueError, match="older than the published 1"):
        clock.publish(0)


def test_a_step_without_a_take_still_moves_the_next_step() -> None:
    clock = OnPolicyClock()  # a batch source without a ledger never calls take
    clock.finish()
    clock.finish()
    assert (clock.next_step, clock.version) == (2, 2) and clock.admits(2)


def test_restore_continues_between_steps() -> None:
    clock = OnPolicyClock(max_staleness=1)
    clock.restore(7)
    assert (clock.next_step, clock.version, clock.published, clock.max_staleness) == (7, 7, 7, 1)
    assert clock.admits(6) and clock.admits(7) and not clock.admits(5)


@pytest.mark.slow
def test_an_untrained_step_counts_and_the_checkpoint_restores_the_clock(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    def learner() -> Learner:
        cfg = LearnerConfig.model_validate({"run_dir": tmp_path, "model": {"path": tiny_model_dir}})
        return Learner(cfg, on_policy=OnPolicyClock(max_staleness=1))

    a = learner()
    before = a.weights()
    flat = [g for g in mixed_batch() if g.work_id in ("c-all-right", "d-all-wrong")]
    untrained = a.train_step(select_groups(flat, drop_zero_variance=True))
    assert not untrained["trained"] and (untrained["step"], untrained["new_version"]) == (0, 1)
    assert all(torch.equal(before[n], w) for n, w in a.weights().items())  # same weights, version 1
    trained = a.train_step(select_groups(mixed_batch(seed=1), drop_zero_variance=True))
    assert trained["trained"] and (trained["step"], trained["policy_version"], trained["new_version"]) == (
        1,
        1,
        2,
    )
    a.on_policy.publish(2)
    a.save_checkpoint()

    b = learner()
    state = b.resume()
    assert state is not None and (state.step, state.policy_version) == (2, 2)
    assert (b.step, b.version) == (2, 2)
    assert (b.on_policy.next_step, b.on_policy.published, b.on_policy.max_staleness) == (2, 2, 1)
