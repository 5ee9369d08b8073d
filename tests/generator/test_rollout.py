"""Rollout groups carry the judge's verdicts as they came, the truncation flag, one version and the
sampling temperature."""

from __future__ import annotations

import numpy as np
import pytest

from generator.engine import Sample
from generator.rollout import judge_request, rollout_group
from proto.codec import decode, encode
from proto.judge import TestCase as Case
from proto.judge import Verdict
from proto.work import SamplingParams, WorkItem


def sample(tokens: int, finish: str) -> Sample:
    return Sample(
        token_ids=np.arange(tokens, dtype=np.int32),
        logprobs=-np.ones(tokens, dtype=np.float32),
        finish_reason=finish,  # type: ignore[arg-type]
        text="<think>x</think> \\boxed{5}",
        versions=frozenset({"3"}),
    )


def item(kind: str = "math") -> WorkItem:
    extra = {"answer": "5"} if kind == "math" else {"tests": [Case(input="1", output="1")], "fn_name": "f"}
    return WorkItem(
        id="s0/e0/p1",
        kind=kind,  # type: ignore[arg-type]
        stage=1,
        policy_version=3,
        prompt="q",
        sampling=SamplingParams(n=2, max_tokens=4, temperature=0.6),
        lease_s=10,
        attempt=2,
        **extra,  # type: ignore[arg-type]
    )


def test_group_carries_verdicts_truncation_and_version() -> None:
    samples = [sample(4, "length"), sample(2, "stop")]
    verdicts = [
        Verdict(id="s0/e0/p1/0", reward=0, status="sandbox_error", detail="judge unreachable"),
        Verdict(id="s0/e0/p1/1", reward=1, status="correct"),
    ]
    group = rollout_group(
        item(),
        generator_id="g",
        policy_version=3,
        prompt_token_ids=np.array([1, 2], dtype=np.int32),
        samples=samples,
        verdicts=verdicts,
        timings={"generate": 0.5},
    )
    first, second = group.completions
    assert (first.truncated, first.finish_reason, first.judge_status, first.reward) == (
        True,
        "length",
        "sandbox_error",  # unjudged stays unjudged: the learner drops it instead of scoring 0
        0.0,
    )
    assert first.judge_detail == "judge unreachable"
    assert (second.truncated, second.reward, second.judge_status) == (False, 1.0, "correct")
    assert (group.policy_version, group.attempt, group.stage) == (3, 2, 1)
    assert group.temperature == 0.6  # the learner takes log-probabilities at the one sampled with
    assert decode(encode(group)) == group


def test_verdicts_must_match_samples() -> None:
    with pytest.raises(ValueError):
        rollout_group(
            item(),
            generator_id="g",
            policy_version=3,
            prompt_token_ids=np.array([1], dtype=np.int32),
            samples=[sample(1, "stop")],
            verdicts=[],
            timings={},
        )


def test_judge_requests_follow_the_contract() -> None:
    math = judge_request(item("math"), "w/0", sample(1, "stop"))
    assert (math.kind, math.answer, math.tests) == ("math", "5", None)
    code = judge_request(item("code"), "w/1", sample(1, "stop"))
    assert (code.kind, code.answer, code.fn_name, len(code.tests or [])) == ("code", None, "f", 1)
