"""The learner learns, in the right direction: on a token bandit sampled from the policy itself,
the true expected reward rises with the real advantage sign and falls with it flipped."""

from __future__ import annotations

from pathlib import Path

import pytest

from learner.config import LearnerConfig
from learner.tiny.bandit import TargetTokenBandit
from learner.training.grpo import select_groups
from learner.training.trainer import Learner
from proto.rollout import RolloutGroup

pytestmark = pytest.mark.slow

STEPS = 6


def flipped(groups: list[RolloutGroup]) -> list[RolloutGroup]:
    """Rewards r -> 1 - r: every group's advantage becomes exactly its negative."""
    return [
        g.model_copy(
            update={"completions": [c.model_copy(update={"reward": 1.0 - c.reward}) for c in g.completions]}
        )
        for g in groups
    ]


def train(model_dir: Path, run_dir: Path, flip: bool) -> list[float]:
    cfg = LearnerConfig.model_validate(
        {"run_dir": run_dir, "model": {"path": model_dir}, "optim": {"lr": 1e-2}}
    )
    learner = Learner(cfg)
    task = TargetTokenBandit(learner.engine.module.config.vocab_size, prompts=8, n=8, completion_len=2)
    curve = [task.expected_reward(learner.engine.module)]
    for _ in range(STEPS):
        groups = task.sample(learner.engine.module, learner.version)
        metrics = learner.train_step(
            select_groups(flipped(groups) if flip else groups, drop_zero_variance=True)
        )
        assert metrics["trained"] and metrics["policy_version"] == groups[0].policy_version
        curve.append(task.expected_reward(learner.engine.module))
    return curve


def test_reward_rises_with_the_real_sign_and_falls_flipped(tiny_model_dir: Path, tmp_path: Path) -> None:
    up = train(tiny_model_dir, tmp_path / "real", flip=False)
    down = train(tiny_model_dir, tmp_path / "flipped", flip=True)
    assert up[0] == pytest.approx(down[0])  # same start: the target set holds ~1/4 of the mass
    # Measured: 0.25 -> 0.56 with the real sign, 0.25 -> 0.11 flipped.
    assert up[-1] > up[0] + 0.15, up
    assert down[-1] < down[0] - 0.07, down
