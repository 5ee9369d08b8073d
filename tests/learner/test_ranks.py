"""The learner on several ranks: the step's batch split by tokens, the update of one rank, and
checkpoints written and resumed by every rank (real DeepSpeed, gloo, processes under torchrun)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from bench.learner_ranks import run_on_ranks
from learner.config import LearnerConfig
from learner.training.batching import SequenceSample, collate, idle_micro_batch, split_by_tokens
from learner.training.trainer import Learner


def sample(prompt: int, completion: int) -> SequenceSample:
    ids = np.arange(completion, dtype=np.int32) + 5
    return SequenceSample(np.full(prompt, 7, np.int32), ids, np.zeros(completion, np.float32), 1.0, True)


def test_the_batch_is_split_by_tokens_not_by_count() -> None:
    # one long sequence and many short ones: by count each rank would get 4; by tokens the long one
    # goes alone
    samples = [sample(4, 60), *[sample(4, 6) for _ in range(7)]]
    shares = split_by_tokens(samples, 2)
    assert [len(s) for s in shares] == [1, 7]
    loads = [sum(s.length for s in share) for share in shares]
    assert loads == [64, 70]
    assert sorted(map(id, shares[0] + shares[1])) == sorted(map(id, samples))  # each sample once


def test_the_split_is_balanced_and_deterministic() -> None:
    rng = np.random.default_rng(3)
    samples = [sample(int(rng.integers(2, 20)), int(rng.integers(1, 200))) for _ in range(101)]
    for ranks in (2, 3, 4):
        shares = split_by_tokens(samples, ranks)
        loads = [sum(s.length for s in share) for share in shares]
        assert max(loads) - min(loads) <= max(s.length for s in samples)
        assert shares == split_by_tokens(samples, ranks)
        assert sum(len(share) for share in shares) == len(samples)


def test_more_ranks_than_samples_leaves_some_empty() -> None:
    shares = split_by_tokens([sample(3, 4)], 3)
    assert [len(s) for s in shares] == [1, 0, 0]


def test_an_idle_micro_batch_carries_no_token() -> None:
    like = collate([sample(3, 5), sample(2, 9)])
    for mb in (idle_micro_batch(like), idle_micro_batch(None, pad_id=0)):
        assert mb.loss_mask.sum() == 0 and mb.valid_mask.sum() == 0 and mb.advantages.abs().sum() == 0
        assert mb.input_ids.shape[1] >= 2 and mb.targets.shape == mb.loss_mask.shape


@pytest.mark.slow
def test_a_learner_asked_for_more_ranks_than_it_runs_says_how(tiny_model_dir: Path, tmp_path: Path) -> None:
    cfg = LearnerConfig.model_validate({"run_dir": tmp_path, "ranks": 2, "model": {"path": tiny_model_dir}})
    with pytest.raises(ValueError, match=r"learner.ranks: 2, but this learner runs as 1 process.*torchrun"):
        Learner(cfg)


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)


@pytest.mark.slow
@pytest.mark.parametrize("zero_stage", [0, 3])
def test_two_ranks_give_the_update_of_one(tiny_model_dir: Path, tmp_path: Path, zero_stage: int) -> None:
    for ranks in (1, 2):
        run_on_ranks(
            ranks,
            *("--model", str(tiny_model_dir), "--run-dir", str(tmp_path / f"r{ranks}")),
            *("--out", str(tmp_path / f"r{ranks}.pt"), "--steps", "2", "--zero-stage", str(zero_stage)),
        )
    one, two = weights(tmp_path / "r1.pt"), weights(tmp_path / "r2.pt")
    assert one.keys() == two.keys()
    moved = max(float((one[k] - w).abs().max()) for k, w in weights_at_start(tiny_model_dir).items())
    assert moved > 1e-4  # the steps changed the weights
    diff = max(float((one[k] - two[k]).abs().max()) for k in one)
    assert diff <= 1e-6, diff


def weights_at_start(model_dir: Path) -> dict[str, torch.Tensor]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    return {name: p.detach() for name, p in model.named_parameters()}


@pytest.mark.slow
def test_two_ranks_resume_a_checkpoint_bit_for_bit(tiny_model_dir: Path, tmp_path: Path) -> None:
    common = ("--model", str(tiny_model_dir), "--run-dir", str(tmp_path / "run"), "--steps", "3")
    run_on_ranks(2, *common, "--save-after", "1", "--out", str(tmp_path / "straight.pt"))
    saved = sorted((tmp_path / "run" / "checkpoints").iterdir())
    assert [p.name for p in saved] == ["step_000000001"]
    assert sorted(p.name for p in saved[0].glob("rng_rank*.pt")) == ["rng_rank0.pt", "rng_rank1.pt"]
    run_on_ranks(2, *common, "--resume", "--out", str(tmp_path / "resumed.pt"))
    straight, resumed = weights(tmp_path / "straight.pt"), weights(tmp_path / "resumed.pt")
    for name, value in straight.items():
        assert torch.equal(resumed[name], value), name
