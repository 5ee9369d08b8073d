"""ZeRO stages 1-3 (on the CPU, one rank) give the stage-0 update and resume exactly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from learner.config import LearnerConfig
from learner.tiny.bandit import TargetTokenBandit
from learner.training.grpo import select_groups
from learner.training.trainer import Learner
from tests.learner.rollouts import mixed_batch

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::FutureWarning")]


def make(model_dir: Path, run_dir: Path, stage: int) -> Learner:
    return Learner(
        LearnerConfig.model_validate(
            {
                "run_dir": run_dir,
                "model": {"path": model_dir},
                "optim": {"lr": 1e-3, "eps": 1e-4},  # eps: see test_micro_batches_give_the_full_batch_update
                "batching": {"micro_batch_tokens": 40},
                "deepspeed": {"zero_stage": stage},
            }
        )
    )


def test_zero_stages_match_stage_0(tiny_model_dir: Path, tmp_path: Path) -> None:
    groups = mixed_batch(seed=11)
    weights, metrics = {}, {}
    for stage in (0, 1, 2, 3):
        learner = make(tiny_model_dir, tmp_path / str(stage), stage)
        metrics[stage] = learner.train_step(select_groups(groups, drop_zero_variance=True))
        weights[stage] = learner.weights()  # gathered from the partitions under ZeRO-3
    for stage in (1, 2, 3):
        assert metrics[stage]["loss"] == pytest.approx(metrics[0]["loss"], rel=1e-6)
        assert metrics[stage]["grad_norm"] == pytest.approx(metrics[0]["grad_norm"], rel=1e-5)
        for name, value in weights[0].items():
            torch.testing.assert_close(weights[stage][name], value, rtol=0, atol=5e-7)


def test_zero3_checkpoint_resumes_exactly(tiny_model_dir: Path, tmp_path: Path) -> None:
    def steps(learner: Learner, task: TargetTokenBandit, count: int) -> list[float]:
        return [
            learner.train_step(
                select_groups(task.sample(learner.engine.module, learner.version), drop_zero_variance=True)
            )["loss"]
            for _ in range(count)
        ]

    a = make(tiny_model_dir, tmp_path / "run", 3)
    task = TargetTokenBandit(a.engine.module.config.vocab_size, prompts=4, n=4)
    steps(a, task, 1)
    path = a.save_checkpoint()
    after = steps(a, task, 2)
    b = make(tiny_model_dir, tmp_path / "run", 3)
    assert b.resume() is not None
    assert steps(b, TargetTokenBandit(b.engine.module.config.vocab_size, prompts=4, n=4), 2) == after
    want, got = a.weights(), b.weights()
    assert all(torch.equal(want[n], got[n]) for n in want)
    assert (path / "hf" / "model.safetensors").stat().st_size > 0
