"""Micro-batches by token budget, and the alignment of targets, masks and advantages."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from learner.training.batching import build_samples, collate, micro_batches, plan_micro_batches
from learner.training.grpo import advantages, select_groups
from tests.learner.rollouts import completion, group, mixed_batch


@given(st.lists(st.integers(1, 300), min_size=1, max_size=60), st.integers(1, 1000))
def test_plan_covers_every_sequence_once_within_budget(lengths: list[int], budget: int) -> None:
    plan = plan_micro_batches(lengths, budget)
    assert sorted(i for batch in plan for i in batch) == list(range(len(lengths)))
    for batch in plan:
        width = max(lengths[i] for i in batch)
        assert len(batch) * width <= budget or len(batch) == 1  # a too-long sequence goes alone


def test_longest_first_keeps_padding_small() -> None:
    plan = plan_micro_batches([5, 100, 6, 98, 7, 99], token_budget=300)
    assert plan == [[1, 5, 3], [4, 2, 0]]


def test_targets_masks_and_advantages_line_up() -> None:
    groups = mixed_batch()
    sel = select_groups(groups, drop_zero_variance=True)
    samples = build_samples(sel.trained, advantages(sel.trained, eps=1e-6), mask_truncated=True)
    mb = collate(samples)
    for row, s in enumerate(samples):
        cols = np.flatnonzero(mb.valid_mask[row].numpy())
        assert len(cols) == len(s.completion)
        positions = mb.keep[cols].numpy()
        # The logits at position t predict the token at t + 1: exactly the completion's tokens.
        np.testing.assert_array_equal(mb.input_ids[row, positions + 1].numpy(), s.completion)
        np.testing.assert_array_equal(mb.targets[row, cols].numpy(), s.completion)
        assert positions[0] == len(s.prompt) - 1
        assert float(mb.loss_mask[row].sum()) == (len(s.completion) if s.trained else 0)
        np.testing.assert_allclose(mb.advantages[row, cols].numpy(), s.advantage)
        np.testing.assert_allclose(mb.sampler_logp[row, cols].numpy(), s.sampler_logp)
        assert int(mb.attention_mask[row].sum()) == s.length
    truncated = [s for s in samples if not s.trained]
    assert len(truncated) == 3  # a, b and f each have one completion cut at the limit


def test_overlong_filtering_is_switchable() -> None:
    g = group("t", [1, 2, 3], [completion([4, 5], 1.0, truncated=True), completion([6], 0.0)])
    adv = [np.array([1.0, -1.0], dtype=np.float32)]
    masked = build_samples([g], adv, mask_truncated=True)
    kept = build_samples([g], adv, mask_truncated=False)
    assert [s.trained for s in masked] == [False, True]
    assert [s.trained for s in kept] == [True, True]


def test_empty_prompt_is_refused_and_empty_completion_skipped() -> None:
    with pytest.raises(ValueError, match="rollout_group bad: prompt_token_ids is empty"):
        build_samples([group("bad", [], [completion([1], 1.0)])], [np.zeros(1)], mask_truncated=True)
    g = group("ok", [1], [completion([], 0.0), completion([2, 3], 1.0)])
    assert len(build_samples([g], [np.array([-1.0, 1.0])], mask_truncated=True)) == 1


def test_micro_batches_split_the_batch() -> None:
    sel = select_groups(mixed_batch(), drop_zero_variance=False)
    samples = build_samples(sel.trained, advantages(sel.trained, eps=1e-6), mask_truncated=True)
    mbs = micro_batches(samples, token_budget=40)
    assert len(mbs) > 1
    assert sum(int(mb.valid_mask.sum()) for mb in mbs) == sum(len(s.completion) for s in samples)
    assert all(mb.input_ids.numel() <= 40 or mb.input_ids.shape[0] == 1 for mb in mbs)


def test_bad_ids_and_logprobs_are_named() -> None:
    adv = [np.zeros(1, dtype=np.float32)]
    with pytest.raises(
        ValueError, match=r"rollout_group big: completions\.0\.token_ids holds ids outside \[0, 512\)"
    ):
        build_samples([group("big", [1], [completion([600], 1.0)])], adv, mask_truncated=True, vocab_size=512)
    with pytest.raises(ValueError, match=r"rollout_group neg: prompt_token_ids"):
        build_samples([group("neg", [-1], [completion([6], 1.0)])], adv, mask_truncated=True, vocab_size=512)
    bad = completion([6], 1.0).model_copy(update={"logprobs": np.array([np.nan], dtype=np.float32)})
    with pytest.raises(ValueError, match=r"rollout_group nan: completions\.0\.logprobs"):
        build_samples([group("nan", [1], [bad])], adv, mask_truncated=True, vocab_size=512)
