"""Rollouts: the judged completions a generator returns for one work item."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from proto.judge import VerdictStatus
from proto.message import Float32Array, Int32Array, Message, Struct


class Completion(Struct):
    token_ids: Int32Array
    logprobs: Float32Array  # the sampler's log-probability of each sampled token
    finish_reason: Literal["stop", "length"]
    truncated: bool  # stopped by the length limit, not by the model
    reward: float
    judge_status: VerdictStatus
    judge_detail: str = Field(default="", max_length=2000)

    @model_validator(mode="after")
    def _aligned(self) -> Completion:
        if len(self.token_ids) != len(self.logprobs):
            raise ValueError(f"logprobs: {len(self.logprobs)} values for {len(self.token_ids)} tokens")
        if self.truncated != (self.finish_reason == "length"):
            raise ValueError("truncated: must be true exactly when finish_reason is 'length'")
        return self


class RolloutGroup(Message):
    """All `n` completions of one work item, sampled with one policy version."""

    TYPE = "rollout_group"

    work_id: str = Field(min_length=1, max_length=256)
    kind: Literal["math", "code"]
    stage: int = Field(ge=0)
    policy_version: int = Field(ge=0)  # the version whose weights sampled every completion
    temperature: float = Field(ge=0)  # the one every completion was sampled at (0: greedy)
    generator_id: str = Field(min_length=1, max_length=256)
    attempt: int = Field(default=0, ge=0)
    prompt_token_ids: Int32Array
    completions: list[Completion] = Field(min_length=1)
    # seconds: queue, generate, judge, total; and Unix times started_at, sampled_at, judged_at
    timings: dict[str, float] = {}


class WorkAborted(Message):
    """Items a generator hands back unfinished (newer version required, shutdown, failure)."""

    TYPE = "work_aborted"

    generator_id: str = Field(min_length=1, max_length=256)
    work_ids: list[str]
    reason: str = Field(max_length=2000)
