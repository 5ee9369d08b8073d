"""Per-prompt results and summaries of an evaluation round: the pass@k estimator, the breakdowns."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from learner.on_policy import OnPolicyClock
from learner.orchestration.eval_results import pass_at, summarize, write_results
from learner.orchestration.evaluation import EvalRound
from proto.prompt import MathPrompt
from proto.rollout import Completion, RolloutGroup
from proto.work import SamplingParams


def brute_pass_at(n: int, correct: int, k: int) -> float:
    """The share of all k-subsets of n samples holding at least one correct one."""
    samples = [True] * correct + [False] * (n - correct)
    subsets = list(itertools.combinations(samples, k))
    return sum(any(s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("n", [1, 4, 7, 10])
def test_pass_at_k_is_the_unbiased_estimator(n: int) -> None:
    for correct in range(n + 1):
        for k in range(1, n + 1):
            assert pass_at(n, correct, k) == pytest.approx(brute_pass_at(n, correct, k), abs=1e-12)
    assert pass_at(n, 0, 1) == 0.0 and pass_at(n, n, 1) == 1.0


def test_pass_at_k_refuses_k_above_n() -> None:
    with pytest.raises(ValueError, match="pass@5"):
        pass_at(4, 1, 5)


def row(prompt_id: str, correct: int, k: int = 4, **meta: object) -> dict:
    return {
        "id": prompt_id,
        "k": k,
        "correct": correct,
        "pass1": correct / k,
        "mean_length": 10.0,
        "truncated": 1 if correct == 0 else 0,
        "statuses": {"correct": correct, "wrong_answer": k - correct},
        **({"meta": meta} if meta else {}),
    }


def test_the_summary_breaks_scores_down_by_difficulty_and_month() -> None:
    rows = [
        row("a", 4, difficulty="easy", date="2024-08-03T00:00:00"),
        row("b", 0, difficulty="hard", date="2024-09-30"),
        row("c", 2, difficulty="hard", date="2024-09-01"),
        row("d", 1),  # no meta: in the totals only
    ]
    summary = summarize(rows, 4, ["e"], {"task": "code"})
    assert summary["task"] == "code" and summary["skipped"] == ["e"] and summary["prompts"] == 4
    assert summary["avg@4"] == pytest.approx((1 + 0 + 0.5 + 0.25) / 4)
    assert summary["pass@"]["1"] == pytest.approx(summary["avg@4"])
    assert summary["pass@"]["4"] == pytest.approx(3 / 4)
    assert summary["pass@"]["2"] == pytest.approx(
        (1 + 0 + brute_pass_at(4, 2, 2) + brute_pass_at(4, 1, 2)) / 4
    )
    assert summary["by_difficulty"] == {
        "easy": {"prompts": 1, "avg@4": 1.0, "pass@4": 1.0},
        "hard": {"prompts": 2, "avg@4": 0.25, "pass@4": 0.5},
    }
    assert (
        set(summary["by_month"]) == {"2024-08", "2024-09"} and summary["by_month"]["2024-09"]["prompts"] == 2
    )
    assert summary["truncated_frac"] == pytest.approx(1 / 16)
    assert summary["statuses"] == {"correct": 7, "wrong_answer": 9}


def test_a_round_writes_one_row_per_scored_prompt_and_lists_the_skipped(tmp_path: Path) -> None:
    prompts = [
        MathPrompt(id=f"p{i}", prompt=f"{i} + 1", answer=str(i + 1), meta={"difficulty": i % 2})
        for i in range(3)
    ]
    on_policy = OnPolicyClock()
    evaluation = EvalRound(
        "t", "math", prompts, SamplingParams(n=2, max_tokens=8), on_policy=on_policy, stage=0, lease_s=10
    )
    items = evaluation.issue("g0", 2)  # p2 is never answered: skipped, never scored as wrong
    for item, rewards in zip(items, [(1, 0), (0, 0)], strict=True):
        completions = [
            Completion(
                token_ids=[1] * (3 + r),
                logprobs=[0.0] * (3 + r),
                finish_reason="stop",
                truncated=False,
                reward=float(r),
                judge_status="correct" if r else "wrong_answer",
            )
            for r in rewards
        ]
        group = RolloutGroup(
            work_id=item.id,
            kind="math",
            stage=0,
            policy_version=0,
            temperature=1.0,
            generator_id="g0",
            prompt_token_ids=[1],
            completions=completions,
        )
        assert evaluation.accept(group) == "scored"
    summary = write_results(tmp_path, evaluation, {"task": "math"})
    rows = [json.loads(line) for line in (tmp_path / "per_prompt.jsonl").read_text().splitlines()]
    assert [(r["id"], r["correct"], r["mean_length"], r["meta"]) for r in rows] == [
        ("p0", 1, 3.5, {"difficulty": 0}),
        ("p1", 0, 3.0, {"difficulty": 1}),
    ]
    assert summary["skipped"] == ["p2"] and summary["avg@2"] == 0.25
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
