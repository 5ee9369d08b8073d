"""A step whose groups trained as they arrived (streamed) makes the update of the whole batch at
once: weights, loss, entropy, mismatch and grad norm. A group streamed for a batch that does not
hold it is discarded; a dropped stream leaves no gradient; where the gradient is not whole in
fp32 on one rank the learner does not stream."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from learner.config import LearnerConfig
from learner.training.grpo import Batch, select_groups
from learner.training.trainer import Learner
from tests.learner.rollouts import mixed_batch

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::FutureWarning")]


def learner(model: Path, run_dir: Path, **extra: Any) -> Learner:
    cfg = {
        "run_dir": run_dir,
        "model": {"path": model},
        "optim": {"lr": 1e-3, "eps": 1e-4},
        "batching": {"micro_batch_tokens": 64},
        **extra,
    }
    return Learner(LearnerConfig.model_validate(cfg))


def batch(seed: int = 11) -> Batch:
    return select_groups(mixed_batch(seed=seed), drop_zero_variance=True)


def assert_same_step(got: tuple[dict, dict], want: tuple[dict, dict]) -> None:
    (metrics, weights), (want_metrics, want_weights) = got, want
    assert metrics["trained"] and want_metrics["trained"]
    for key in ("loss", "entropy", "logprob_mismatch", "logprob_mismatch_kl", "grad_norm"):
        assert metrics[key] == pytest.approx(want_metrics[key], rel=1e-5), key
    assert metrics["logprob_mismatch_max"] == pytest.approx(want_metrics["logprob_mismatch_max"], rel=1e-6)
    for key in ("tokens", "loss_tokens"):
        assert metrics[key] == want_metrics[key], key
    for name, value in want_weights.items():
        torch.testing.assert_close(weights[name], value, rtol=0, atol=5e-7)


def test_streamed_groups_give_the_update_of_the_whole_batch(tiny_model_dir: Path, tmp_path: Path) -> None:
    whole = learner(tiny_model_dir, tmp_path / "whole")
    want_metrics = whole.train_step(batch())
    want = (want_metrics, whole.weights())

    streamed = learner(tiny_model_dir, tmp_path / "streamed")
    assert streamed.streams
    groups = batch().trained
    assert len(groups) == 3
    streamed.stream(groups[:1])
    streamed.stream(groups[1:2])  # the third comes with the batch
    metrics = streamed.train_step(batch())
    assert metrics["streamed_parts"] == 3 and metrics["stream_s"] > 0
    assert metrics["micro_batches"] >= 3
    assert_same_step((metrics, streamed.weights()), want)
    # the next step starts from nothing streamed: a plain step again
    assert "streamed_parts" not in streamed.train_step(batch(seed=12))


def test_a_stranger_in_the_stream_is_discarded(tiny_model_dir: Path, tmp_path: Path) -> None:
    whole = learner(tiny_model_dir, tmp_path / "whole")
    want = (whole.train_step(batch()), whole.weights())
    strayed = learner(tiny_model_dir, tmp_path / "strayed")
    stranger = batch(seed=3).trained[0].model_copy(update={"work_id": "not-in-the-batch"})
    strayed.stream([stranger])
    strayed.stream(batch().trained[:1])
    assert_same_step((strayed.train_step(batch()), strayed.weights()), want)


def test_a_dropped_stream_leaves_no_gradient(tiny_model_dir: Path, tmp_path: Path) -> None:
    one = learner(tiny_model_dir, tmp_path / "one")
    one.stream(batch().trained)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in one.engine.module.parameters())
    one.drop_stream()
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in one.engine.module.parameters())
    whole = learner(tiny_model_dir, tmp_path / "whole")
    want = (whole.train_step(batch()), whole.weights())
    assert_same_step((one.train_step(batch()), one.weights()), want)


@pytest.mark.parametrize(
    "extra",
    [
        {"deepspeed": {"zero_stage": 2}},
        {"grpo": {"updates_per_batch": 2}},
        {"batching": {"micro_batch_tokens": 64, "stream": False}},
    ],
    ids=["zero2", "two-updates", "off"],
)
def test_no_stream_where_the_gradient_cannot_be_rescaled(
    tiny_model_dir: Path, tmp_path: Path, extra: dict
) -> None:
    held = learner(tiny_model_dir, tmp_path, **extra)
    assert not held.streams
    with pytest.raises(RuntimeError, match="cannot stream"):
        held.stream(batch().trained)
