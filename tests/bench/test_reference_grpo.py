"""The plain reference loop fills its batches as the system's dynamic sampling does."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from bench import reference_grpo
from bench.reference_grpo import Completion, sample_batch
from learner.orchestration.prompts import PromptOrder
from learner.orchestration.schedule import Schedule
from proto.prompt import MathPrompt


def schedule(dynamic: bool, limit: float = 1.0) -> Schedule:
    stage = {"name": "m", "kind": "math", "prompts": "m.jsonl", "steps": 1, "max_response_tokens": 8}
    stage |= {"batch_prompts": 4, "n": 2, "learning_rate": 1e-4}
    return Schedule(stages=[stage], dynamic_sampling=dynamic, max_zero_variance_batches=limit)


@pytest.mark.parametrize(
    ("dynamic", "limit", "sampled", "trained"),
    [
        # every other group sampled is flat: 4 left out and sampled again, 4 with spread of 8
        (True, 1.0, 8, 4),
        # at most 2 left out: then a flat one fills a slot and trains nothing
        (True, 0.5, 6, 3),
        # without dynamic sampling the first 4 are the batch
        (False, 1.0, 4, 2),
    ],
)
def test_flat_groups_are_sampled_again_up_to_the_limit(
    monkeypatch: pytest.MonkeyPatch, dynamic: bool, limit: float, sampled: int, trained: int
) -> None:
    prompts = {f"p{i}": MathPrompt(id=f"p{i}", prompt=f"{i}", answer="1") for i in range(20)}
    asked: list[int] = []

    def fake_sample(model: object, tokenizer: object, rendered: list, *rest: object) -> list:
        groups = []
        for _ in rendered:
            first = "0" if sum(asked) % 2 == 0 else "1"  # even groups all wrong, odd ones half right
            groups.append([Completion([1], first, False), Completion([2], "0", False)])
            asked.append(1)
        return groups

    monkeypatch.setattr(reference_grpo, "sample", fake_sample)
    monkeypatch.setattr(reference_grpo, "reward", lambda c, answer: float(c.text == answer))
    monkeypatch.setattr(reference_grpo, "render", lambda tokenizer, prompt: [1, 2])
    s = schedule(dynamic, limit)
    recipe = SimpleNamespace(learner=SimpleNamespace(schedule=s, grpo=SimpleNamespace(adv_eps=1e-6)))
    order = PromptOrder(list(prompts), seed="x")
    rows, rewards = sample_batch(None, None, order, prompts, recipe, s.stages[0])  # type: ignore[arg-type]
    assert len(asked) == sampled and len(rewards) == 2 * sampled
    assert len(rows) == 2 * trained  # both completions of every group with spread
