"""Assertion-style test programs (HumanEval's `check(candidate)`, MBPP's plain asserts) and
call-based problems answered with a top-level function (Codewars style), in the real jail."""

from __future__ import annotations

from judge.code_check import judge_code
from judge.sandbox import Sandbox
from proto.judge import JudgeRequest

HUMANEVAL_TEST = """
METADATA = {"author": "x"}


def check(candidate):
    assert candidate([1, 2, 3]) == 6
    assert candidate([]) == 0
"""
SOLUTION = "def total(values):\n    return sum(values)\n"


def request(source: str, test_program: str, fn_name: str | None = "total", **fields: object) -> JudgeRequest:
    response = f"<think>add</think>\n```python\n{source}```"
    return JudgeRequest(
        id="a", kind="code", response=response, test_program=test_program, fn_name=fn_name, **fields
    )  # type: ignore[arg-type]


def test_check_candidate_passes_and_fails(sandbox: Sandbox) -> None:
    assert judge_code(request(SOLUTION, HUMANEVAL_TEST), sandbox).status == "accepted"
    wrong = judge_code(request("def total(values):\n    return sum(values) + 1\n", HUMANEVAL_TEST), sandbox)
    assert wrong.status == "wrong_answer" and "assertion" in wrong.detail
    crash = judge_code(request("def total(values):\n    return values[5]\n", HUMANEVAL_TEST), sandbox)
    assert crash.status == "runtime_error" and "IndexError" in crash.detail
    missing = judge_code(request("def other(values):\n    return 0\n", HUMANEVAL_TEST), sandbox)
    assert missing.status == "runtime_error" and "'total'" in missing.detail


def test_plain_asserts_and_limits(sandbox: Sandbox) -> None:
    mbpp = "assert total([1, 1]) == 2\nassert total([5]) == 5\n"
    assert judge_code(request(SOLUTION, mbpp, fn_name=None), sandbox).status == "accepted"
    assert (
        judge_code(request(SOLUTION, "assert total([1]) == 2\n", fn_name=None), sandbox).status
        == "wrong_answer"
    )
    slow = "def total(values):\n    while True:\n        pass\n"
    assert judge_code(request(slow, HUMANEVAL_TEST, time_limit_s=1), sandbox).status == "time_limit"
    for escape in ("import sys\n    sys.exit(0)", "import os\n    os._exit(0)"):  # exit 0 before the asserts
        source = f"def total(values):\n    {escape}\n"
        outcome = judge_code(request(source, HUMANEVAL_TEST), sandbox)
        assert outcome.status == "wrong_answer" and "ended before the tests" in outcome.detail


def test_a_broken_test_program_is_a_bad_request(sandbox: Sandbox) -> None:
    outcome = judge_code(request(SOLUTION, "def check(candidate:\n"), sandbox)
    assert outcome.status == "bad_request" and outcome.detail.startswith("test_program:")


def test_call_based_with_a_top_level_function(sandbox: Sandbox) -> None:
    source = "def add(a, b):\n    return a + b\n"
    response = f"```python\n{source}```"
    tests = [{"input": "1\n2", "output": "3"}, {"input": "[1]\n[2]", "output": "[1, 2]"}]
    plain = JudgeRequest.model_validate(
        {"id": "c", "kind": "code", "response": response, "tests": tests, "fn_name": "add"}
    )
    assert judge_code(plain, sandbox).status == "accepted"
    # A name the prelude brings in (math's `gcd`) is not the program's: it must define it.
    borrowed = plain.model_copy(update={"fn_name": "gcd", "response": "```python\nx = 1\n```"})
    outcome = judge_code(borrowed, sandbox)
    assert outcome.status == "runtime_error" and "no class Solution or function 'gcd'" in outcome.detail
