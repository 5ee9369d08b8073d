"""A prompt that opened `<think>` (DeepSeek-R1-Distill's template): only the text after the last
`</think>` counts, and a response that never closes it has no answer; verdicts echo truncation."""

from __future__ import annotations

import pytest

from judge.code_check import judge_code
from judge.extract import final_text
from judge.math_check import judge_math
from judge.sandbox import Sandbox
from proto.codec import decode, encode
from proto.judge import JudgeRequest, Verdict
from proto.judge_client import JudgeClient
from tests.judge.conftest import code_request, math_request
from tests.judge_daemon import LiveDaemon


@pytest.mark.parametrize(
    ("response", "opened", "final"),
    [
        ("no tags at all \\boxed{5}", False, "no tags at all \\boxed{5}"),
        ("no tags at all \\boxed{5}", True, None),
        ("reasoning \\boxed{4} </think> answer", True, " answer"),
        ("a </think> b </think> c", True, " c"),
        ("<think>still thinking", False, None),
        ("", True, None),
    ],
)
def test_final_text(response: str, opened: bool, final: str | None) -> None:
    assert final_text(response, opened) == final


def test_math_scores_only_after_the_last_close() -> None:
    assert judge_math("2 + 3 = 5, \\boxed{5}", "5", opened_think=True).status == "no_answer"
    assert judge_math("2 + 3 = 5, \\boxed{5}", "5").status == "correct"  # no template: as before
    response = "reasoning \\boxed{4} </think> The answer is \\boxed{5}"
    assert judge_math(response, "5", opened_think=True).status == "correct"
    assert judge_math(response, "4", opened_think=True).status == "wrong_answer"
    assert judge_math("\\boxed{5} </think> five", "5", opened_think=True).status == "no_answer"


def test_code_inside_unfinished_reasoning_is_no_code(sandbox: Sandbox) -> None:
    source = "print(int(input()) + 1)"
    inside = code_request(source, [("1", "2")], fenced=False, opened_think=True)
    inside = inside.model_copy(update={"response": f"plan\n```python\n{source}\n```\n"})
    outcome = judge_code(inside, sandbox)
    assert outcome.status == "no_code" and "prompt opened <think>" in outcome.detail
    after = inside.model_copy(
        update={"response": f"plan\n```python\nprint(0)\n```\n</think>\n```python\n{source}\n```"}
    )
    assert judge_code(after, sandbox).status == "accepted"


def test_the_new_fields_cross_the_wire_and_default_off() -> None:
    request = JudgeRequest(id="r", kind="math", response="x", answer="1", opened_think=True, truncated=True)
    assert decode(encode(request)) == request
    assert (JudgeRequest(id="r", kind="math", response="x", answer="1").opened_think, request.truncated) == (
        False,
        True,
    )
    verdict = Verdict(id="r", reward=0, status="no_answer", truncated=True)
    assert decode(encode(verdict)) == verdict


def test_the_daemon_applies_the_think_rule_and_echoes_truncation(daemon: LiveDaemon) -> None:
    response = "reasoning \\boxed{4} </think> The answer is \\boxed{5}"
    requests = [
        math_request("so \\boxed{5}", "5", "t-open").model_copy(
            update={"opened_think": True, "truncated": True}
        ),
        math_request(response, "5", "t-after").model_copy(update={"opened_think": True}),
        math_request("so \\boxed{5}", "5", "t-plain"),
    ]
    with JudgeClient(daemon.address, request_timeout_s=60) as client:
        verdicts = client.judge(requests, timeout_s=60)
    seen = {ident: (v.status, v.truncated) for ident, v in verdicts.items()}
    assert seen == {
        "t-open": ("no_answer", True),
        "t-after": ("correct", False),
        "t-plain": ("correct", False),
    }
