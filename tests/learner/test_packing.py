"""Packed micro-batches (sequences one after another in a row, position ids restarting at 0) give
the log-probs, entropies, gradients and learner update of padded ones; the plan keeps within the
token budget and packs tighter than padding does."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from learner.config import LearnerConfig
from learner.training.batching import (
    SequenceSample,
    collate,
    idle_micro_batch,
    micro_batches,
    pack,
    plan_micro_batches,
    plan_packed,
)
from learner.training.engine import packs_sequences, sequence_logprobs
from learner.training.grpo import select_groups
from learner.training.trainer import Learner
from tests.learner.rollouts import mixed_batch
from tests.learner.test_chunked_logprobs import VOCAB, assert_close_to_scale, causal_lm


def samples(lengths: list[tuple[int, int]], seed: int = 0) -> list[SequenceSample]:
    rng = np.random.default_rng(seed)
    return [
        SequenceSample(
            prompt=rng.integers(1, VOCAB, size=p).astype(np.int32),
            completion=rng.integers(1, VOCAB, size=c).astype(np.int32),
            sampler_logp=rng.normal(size=c).astype(np.float32),
            advantage=float(rng.normal()),
            trained=bool(i % 3),
        )
        for i, (p, c) in enumerate(lengths)
    ]


@given(st.lists(st.integers(1, 300), min_size=1, max_size=60), st.integers(1, 1000))
def test_packed_plan_covers_every_sequence_once_within_budget(lengths: list[int], budget: int) -> None:
    plan = plan_packed(lengths, budget)
    assert sorted(i for batch in plan for i in batch) == list(range(len(lengths)))
    for batch in plan:
        assert sum(lengths[i] for i in batch) <= budget or len(batch) == 1


def test_packing_leaves_no_padding_where_rows_would() -> None:
    lengths = [100, 60, 40, 35, 25]
    packed = plan_packed(lengths, token_budget=160)
    assert packed == [[0, 1], [2, 3, 4]]
    padded = plan_micro_batches(lengths, token_budget=160)
    slots = sum(len(b) * max(lengths[i] for i in b) for b in padded)
    assert (len(padded), slots) == (3, 100 + 2 * 60 + 2 * 35)  # 30 of 290 slots pad
    assert sum(lengths[i] for b in packed for i in b) == sum(lengths)


def test_packed_row_lines_up_targets_masks_and_positions() -> None:
    group = samples([(5, 9), (3, 4), (7, 6)])
    mb = pack(group)
    assert mb.packed and mb.attention_mask is None
    assert mb.input_ids.shape == (1, sum(s.length for s in group)) == (1, mb.num_tokens)
    start = 0
    col = 0
    for s in group:
        np.testing.assert_array_equal(
            mb.position_ids[0, start : start + s.length].numpy(), np.arange(s.length)
        )
        cols = slice(col, col + len(s.completion))
        positions = mb.keep[cols].numpy()
        assert positions[0] == start + len(s.prompt) - 1  # the prompt's last token predicts the first
        np.testing.assert_array_equal(mb.input_ids[0, positions + 1].numpy(), s.completion)
        np.testing.assert_array_equal(mb.targets[0, cols].numpy(), s.completion)
        assert set(mb.loss_mask[0, cols].tolist()) == {float(s.trained)}
        np.testing.assert_allclose(mb.advantages[0, cols].numpy(), s.advantage)
        np.testing.assert_allclose(mb.sampler_logp[0, cols].numpy(), s.sampler_logp)
        start, col = start + s.length, col + len(s.completion)
    assert col == mb.targets.shape[1] == int(mb.valid_mask.sum())
    idle = idle_micro_batch(mb)
    assert idle.packed and float(idle.loss_mask.sum()) == 0.0


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_packed_logprobs_and_gradients_equal_padded(tied: bool) -> None:
    """Under sdpa the model builds the block-diagonal mask from the position ids: no sequence
    sees another's tokens."""
    model = causal_lm(tied=tied)
    group = samples([(5, 9), (3, 4), (7, 6), (2, 1)])
    padded, packed = collate(group), pack(group)

    def run(mb: object, order: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, dict]:
        logp, entropy = sequence_logprobs(model, mb, 0.7, chunk_tokens=5, entropy_grad=True)
        if order is not None:  # padded rows [B, K] -> the packed order of their valid tokens
            logp, entropy = logp[order], entropy[order]
        logp, entropy = logp.reshape(-1), entropy.reshape(-1)
        weights = torch.linspace(-1.0, 2.0, logp.numel())
        model.zero_grad(set_to_none=True)
        (weights * (logp - 0.1 * entropy)).sum().backward()
        return logp.detach(), entropy.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    want_logp, want_entropy, want_grads = run(padded, padded.valid_mask.bool())
    logp, entropy, grads = run(packed, None)
    torch.testing.assert_close(logp, want_logp, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(entropy, want_entropy, rtol=1e-6, atol=1e-6)
    for name, grad in grads.items():
        assert_close_to_scale(grad, want_grads[name], name)


def test_packing_is_on_where_the_kernel_reads_packed_rows() -> None:
    assert packs_sequences("auto", "flash_attention_2")
    assert not packs_sequences("auto", "sdpa")
    assert packs_sequences("on", "sdpa")
    assert not packs_sequences("off", "flash_attention_2")
    with pytest.raises(ValueError, match=r"batching\.packing"):
        LearnerConfig.model_validate({"batching": {"packing": "yes"}})


def test_micro_batches_packed_hold_every_sample() -> None:
    group = samples([(5, 30), (3, 4), (7, 6), (2, 50)])
    mbs = micro_batches(group, token_budget=60, packed=True)
    assert all(mb.packed for mb in mbs)
    assert sum(mb.num_tokens for mb in mbs) == sum(s.length for s in group)
    assert max(mb.num_tokens for mb in mbs) <= 60


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.parametrize("stage", [0, 3])
def test_learner_step_packed_equals_padded(tiny_model_dir: Path, tmp_path: Path, stage: int) -> None:
    def step(packing: str) -> tuple[dict, dict[str, torch.Tensor]]:
        cfg = LearnerConfig.model_validate(
            {
                "run_dir": tmp_path / packing,
                "model": {"path": tiny_model_dir},
                "optim": {"lr": 1e-3, "eps": 1e-4},
                "batching": {"micro_batch_tokens": 64, "packing": packing},
                "deepspeed": {"zero_stage": stage},
            }
        )
        learner = Learner(cfg)
        assert learner.engine.packed == (packing == "on")
        metrics = learner.train_step(select_groups(mixed_batch(seed=11), drop_zero_variance=True))
        return metrics, learner.weights()

    (metrics, weights), (want_metrics, want_weights) = step("on"), step("off")
    assert metrics["trained"]
    assert metrics["micro_batches"] < want_metrics["micro_batches"]  # no padding: fewer, fuller ones
    assert metrics["tokens"] == want_metrics["tokens"]
    assert metrics["loss"] == pytest.approx(want_metrics["loss"], rel=1e-5)
    assert metrics["entropy"] == pytest.approx(want_metrics["entropy"], rel=1e-5)
    assert metrics["grad_norm"] == pytest.approx(want_metrics["grad_norm"], rel=1e-5)
    for name, value in want_weights.items():
        torch.testing.assert_close(weights[name], value, rtol=0, atol=5e-7)
