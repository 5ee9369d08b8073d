"""The step's edges: bad input changes nothing, a batch without signal keeps the weights but still
counts as a step, versions count."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from learner.config import LearnerConfig
from learner.training.grpo import select_groups
from learner.training.trainer import Learner
from tests.learner.rollouts import completion, group, mixed_batch

pytestmark = pytest.mark.slow


@pytest.fixture
def learner(tiny_model_dir: Path, tmp_path: Path) -> Learner:
    return Learner(LearnerConfig.model_validate({"run_dir": tmp_path, "model": {"path": tiny_model_dir}}))


def snapshot(learner: Learner) -> dict[str, torch.Tensor]:
    return learner.weights()


def unchanged(learner: Learner, before: dict[str, torch.Tensor]) -> bool:
    after = learner.weights()
    return all(torch.equal(after[n], before[n]) for n in before)


def test_bad_group_raises_before_anything_changes(learner: Learner) -> None:
    before = snapshot(learner)
    bad = group("bad", [1, 2], [completion([3], 1.0), completion([10_000], 0.0)])
    with pytest.raises(ValueError, match="rollout_group bad"):
        learner.train_step(select_groups([*mixed_batch(), bad], drop_zero_variance=True))
    assert (learner.step, learner.version, learner.engine.optimizer_steps) == (0, 0, 0)
    assert unchanged(learner, before)
    assert learner.train_step(select_groups(mixed_batch(), drop_zero_variance=True))["trained"]
    assert (learner.step, learner.version) == (1, 1)


def test_batch_without_signal_keeps_the_weights_and_still_counts(learner: Learner) -> None:
    before = snapshot(learner)
    flat = [g for g in mixed_batch() if g.work_id in ("c-all-right", "d-all-wrong", "e-unjudged")]
    metrics = learner.train_step(select_groups(flat, drop_zero_variance=True))
    assert not metrics["trained"]
    assert (
        metrics["groups_zero_var"] == 2
        and metrics["groups_unjudged"] == 1
        and metrics["zero_var_frac"] == 1.0
    )
    assert unchanged(learner, before) and learner.engine.optimizer_steps == 0
    # the step finished on the clock (learner/on_policy.py): the version moves on, same weights
    assert (metrics["step"], metrics["new_version"], learner.step, learner.version) == (0, 1, 1, 1)


def test_versions_and_metrics_of_consecutive_steps(learner: Learner) -> None:
    for step in range(3):
        groups = [g.model_copy(update={"policy_version": step, "stage": 2}) for g in mixed_batch(seed=step)]
        metrics = learner.train_step(select_groups(groups, drop_zero_variance=True))
        assert (metrics["step"], metrics["policy_version"], metrics["new_version"]) == (step, step, step + 1)
        assert metrics["sample_versions"] == [step, step] and metrics["stage"] == 2
        assert metrics["groups_trained"] == 3 and metrics["truncated_frac"] == pytest.approx(4 / 15)
        assert metrics["response_len_max"] == 12 and metrics["grad_norm"] > 0
    assert learner.engine.optimizer_steps == 3
