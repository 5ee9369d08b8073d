"""Judge requests and verdicts: the contract of the verification service.

math: {"id", "kind": "math", "response", "answer"}
code: {"id", "kind": "code", "response", "tests": [{"input", "output"}], "fn_name"?,
       "time_limit_s"?, "memory_limit_mb"?}, or instead of "tests" a "test_program" (assertion
       style: HumanEval's `check(candidate)`, called on "fn_name", or MBPP's plain asserts)
either kind also takes "opened_think" (the prompt ended inside an open <think> block) and
"truncated" (sampling stopped at max tokens)
verdict: {"id", "reward": 0 | 1, "status", "detail", "truncated"}
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from proto.message import Message, Struct

MATH_STATUSES = ("correct", "wrong_answer", "no_answer", "timeout")
CODE_STATUSES = (
    "accepted",
    "wrong_answer",
    "runtime_error",
    "time_limit",
    "memory_limit",
    "output_limit",
    "no_code",
    "syntax_error",
    "sandbox_error",
)
# bad_request: the request itself was invalid; it was not judged.
ALL_STATUSES = (*dict.fromkeys(MATH_STATUSES + CODE_STATUSES), "bad_request")
VerdictStatus = Literal[ALL_STATUSES]  # type: ignore[valid-type]  # Literal of every name above
REWARDED_STATUSES = frozenset({"correct", "accepted"})
# Verdicts that say nothing about the response: a trainer must not turn them into reward 0.
UNJUDGED_STATUSES = frozenset({"timeout", "sandbox_error", "bad_request"})

MAX_DETAIL_CHARS = 2000


class TestCase(Struct):
    input: str
    output: str


class Reference(Struct):
    """What a response is checked against: a math answer, or code tests and their limits."""

    answer: str | None = None
    tests: list[TestCase] | None = None
    fn_name: str | None = None  # call-based: the method of `class Solution`, or a top-level function
    test_program: str | None = None  # assertion style: run after the program; passes if it exits 0
    time_limit_s: float | None = Field(default=None, gt=0)
    memory_limit_mb: int | None = Field(default=None, gt=0)


class JudgeRequest(Message, Reference):
    TYPE = "judge_request"

    id: str = Field(min_length=1, max_length=256)
    kind: Literal["math", "code"]
    response: str
    # Templates such as DeepSeek-R1-Distill's end the prompt with `<think>`: the response then
    # starts inside the reasoning and holds only `</think>`, so without `</think>` it gave no answer.
    opened_think: bool = False
    # Sampling stopped at max tokens; echoed on the verdict so that a cut-off response is visible.
    truncated: bool = False

    @model_validator(mode="after")
    def _fields_match_kind(self) -> JudgeRequest:
        if self.kind == "math":
            if self.answer is None:
                raise ValueError("answer: a math request needs the reference answer")
            if self.tests is not None or self.fn_name is not None or self.test_program is not None:
                raise ValueError("tests: a math request carries no tests")
        else:
            if self.test_program is not None and self.tests:
                raise ValueError("tests: a request with a test_program carries no other tests")
            if not self.tests and self.test_program is None:
                raise ValueError("tests: a code request needs at least one test case, or a test_program")
            if self.answer is not None:
                raise ValueError("answer: a code request carries tests, not an answer")
        return self


class Verdict(Message):
    TYPE = "verdict"

    id: str = Field(max_length=256)
    reward: Literal[0, 1]
    status: VerdictStatus
    detail: str = Field(default="", max_length=MAX_DETAIL_CHARS)
    truncated: bool = False  # the request's flag: the response was cut off at max tokens

    @model_validator(mode="after")
    def _reward_matches_status(self) -> Verdict:
        if (self.reward == 1) != (self.status in REWARDED_STATUSES):
            raise ValueError(f"reward: {self.reward} contradicts status {self.status!r}")
        return self


class StatsRequest(Message):
    TYPE = "stats_request"


class JudgeStats(Message):
    TYPE = "judge_stats"

    counts: dict[str, int]
    latency_ms: dict[str, float]  # percentiles: p50, p90, p99, max
    queue_depth: int
    in_flight: int
    workers: int
    uptime_s: float
