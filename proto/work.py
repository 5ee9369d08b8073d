"""Work items: prompts the dispatcher hands to generators, and the credits that pace it."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from proto.judge import Reference
from proto.message import Int32Array, Message, Struct


class SamplingParams(Struct):
    n: int = Field(ge=1)
    max_tokens: int = Field(ge=1)
    temperature: float = Field(default=1.0, ge=0)
    top_p: float = Field(default=1.0, gt=0, le=1)
    top_k: int = -1
    stop: list[str] = []
    seed: int | None = None


class WorkItem(Message, Reference):
    """One prompt to sample `sampling.n` completions for, with what the judge checks them against."""

    TYPE = "work_item"

    id: str = Field(min_length=1, max_length=256)
    kind: Literal["math", "code"]
    stage: int = Field(ge=0)
    policy_version: int = Field(ge=0)  # the weights the completions must be sampled with
    prompt: str | None = None
    prompt_token_ids: Int32Array | None = None
    apply_chat_template: bool = True
    sampling: SamplingParams
    lease_s: float = Field(gt=0)  # re-issued elsewhere if not answered within this time
    attempt: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _consistent(self) -> WorkItem:
        if (self.prompt is None) == (self.prompt_token_ids is None):
            raise ValueError("prompt: give exactly one of prompt and prompt_token_ids")
        if self.kind == "math" and self.answer is None:
            raise ValueError("answer: a math item needs the reference answer")
        if self.kind == "code" and not self.tests and self.test_program is None:
            raise ValueError("tests: a code item needs at least one test case, or a test_program")
        return self


class Credit(Message):
    """A generator may hold `credits` more work items; the dispatcher sends at most that many."""

    TYPE = "credit"

    generator_id: str = Field(min_length=1, max_length=256)
    credits: int = Field(ge=0)


class WorkBatch(Message):
    TYPE = "work_batch"

    items: list[WorkItem]


class WorkCancel(Message):
    """The dispatcher no longer wants these items (stage change, batch full, lease re-issued)."""

    TYPE = "work_cancel"

    work_ids: list[str]
    reason: str = ""
