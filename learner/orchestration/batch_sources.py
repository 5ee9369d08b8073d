"""Batch sources without generators, for `learner train` and `learner demo` (loop.py runs them):
groups read from a rollout file, or sampled in-process from the policy on the bandit task. Their
groups are screened here as they come (`grpo.select_groups`), dropping zero-variance ones
per `grpo.drop_zero_variance`; the step's other settings are the config's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from learner.orchestration.loop import BatchSource, Taken
from learner.tiny.bandit import TargetTokenBandit
from learner.training.grpo import select_groups
from learner.training.rollout_file import read_groups
from learner.training.trainer import Learner
from proto.config import ConfigError
from proto.rollout import RolloutGroup


class FileSource(BatchSource):
    """`groups_per_step` groups per step in file order; later epochs cycle through the file."""

    def __init__(self, learner: Learner, path: Path, groups_per_step: int) -> None:
        if groups_per_step < 1:
            raise ConfigError("--groups-per-step: must be at least 1")
        self.learner = learner
        self.groups: list[RolloutGroup] = list(read_groups(path))
        self.per_step = groups_per_step
        self.steps_in_file = len(self.groups) // groups_per_step
        if self.steps_in_file == 0:
            raise ConfigError(f"--rollouts: {len(self.groups)} groups hold no full step of {groups_per_step}")

    def take(self) -> Taken:
        # by the step, not by a cursor of its own: a resumed run reads on where it stopped
        start = (self.learner.step % self.steps_in_file) * self.per_step
        groups = self.groups[start : start + self.per_step]
        return Taken(select_groups(groups, drop_zero_variance=self.learner.cfg.grpo.drop_zero_variance))

    def state(self) -> dict[str, Any]:
        return {"command": "train"}


class BanditSource(BatchSource):
    """The target-token bandit, sampled from the policy itself at `grpo.temperature` every step."""

    def __init__(self, learner: Learner, *, prompts: int, n: int, completion_len: int) -> None:
        self.learner = learner
        self.task = TargetTokenBandit(
            learner.engine.module.config.vocab_size,
            prompts=prompts,
            n=n,
            completion_len=completion_len,
            seed=learner.cfg.seed,
        )

    def take(self) -> Taken:
        module, temperature = self.learner.engine.module, self.learner.cfg.grpo.temperature
        expected = self.task.expected_reward(module, temperature=temperature)
        groups = self.task.sample(module, self.learner.version, temperature=temperature)
        drop = self.learner.cfg.grpo.drop_zero_variance
        return Taken(select_groups(groups, drop_zero_variance=drop), fields={"expected_reward": expected})

    def state(self) -> dict[str, Any]:
        return {"command": "demo"}
