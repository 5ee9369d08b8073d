"""From sampled completions to judge requests, and from verdicts to the RolloutGroup returned."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from generator.engine import Sample
from proto.judge import MAX_DETAIL_CHARS, JudgeRequest, Verdict
from proto.rollout import Completion, RolloutGroup
from proto.work import WorkItem


def judge_request(
    item: WorkItem, request_id: str, sample: Sample, opened_think: bool = False
) -> JudgeRequest:
    """What the judge needs to score one completion of `item` (the judge contract in proto/judge.py).

    `opened_think`: the rendered prompt ended with `<think>` (generator/thinking.py).
    """
    truncated = sample.finish_reason == "length"
    if item.kind == "math":
        return JudgeRequest(
            id=request_id,
            kind="math",
            response=sample.text,
            answer=item.answer,
            opened_think=opened_think,
            truncated=truncated,
        )
    return JudgeRequest(
        id=request_id,
        kind="code",
        response=sample.text,
        opened_think=opened_think,
        truncated=truncated,
        tests=item.tests,
        fn_name=item.fn_name,
        test_program=item.test_program,
        time_limit_s=item.time_limit_s,
        memory_limit_mb=item.memory_limit_mb,
    )


def completion(sample: Sample, verdict: Verdict) -> Completion:
    return Completion(
        token_ids=sample.token_ids,
        logprobs=sample.logprobs,
        finish_reason=sample.finish_reason,
        truncated=sample.finish_reason == "length",
        reward=float(verdict.reward),
        judge_status=verdict.status,
        judge_detail=verdict.detail[:MAX_DETAIL_CHARS],
    )


def rollout_group(
    item: WorkItem,
    *,
    generator_id: str,
    policy_version: int,
    prompt_token_ids: np.ndarray,
    samples: Sequence[Sample],
    verdicts: Sequence[Verdict],
    timings: dict[str, float],
) -> RolloutGroup:
    """One group per item; every completion was sampled by `policy_version` (the caller checked)."""
    return RolloutGroup(
        work_id=item.id,
        kind=item.kind,
        stage=item.stage,
        policy_version=policy_version,
        temperature=item.sampling.temperature,
        generator_id=generator_id,
        attempt=item.attempt,
        prompt_token_ids=prompt_token_ids,
        completions=[completion(s, v) for s, v in zip(samples, verdicts, strict=True)],
        timings=timings,
    )
