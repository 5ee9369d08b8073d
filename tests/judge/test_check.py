"""`python -m judge check`: JSON Lines in, one verdict line per request out, in input order."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.judge.conftest import code_request, math_request
from tests.judge_daemon import ROOT, LiveDaemon

CALL_BASED = "```python\nclass Solution:\n    def f(self, x):\n        return x + 1\n```"
LINES = [
    (math_request("<think>hmm</think>\\boxed{\\frac{1}{2}}", "0.5", "m1").model_dump_json(), "m1", "correct"),
    ("this is not json", "", "bad_request"),
    (json.dumps({"id": "m2", "kind": "math", "response": "\\boxed{3}"}), "m2", "bad_request"),
    (code_request("print(int(input()) * 2)", [("4", "8")], ident="c1").model_dump_json(), "c1", "accepted"),
    (json.dumps(["an", "array"]), "", "bad_request"),
    (json.dumps({"id": "e1", "kind": "essay", "response": "x"}), "e1", "bad_request"),
    (math_request("\\boxed{3}", "4", "m3").model_dump_json(), "m3", "wrong_answer"),
    (
        json.dumps(
            {
                "id": "c2",
                "kind": "code",
                "response": CALL_BASED,
                "tests": [{"input": "1", "output": "2"}],
                "fn_name": "f",
            }
        ),
        "c2",
        "accepted",
    ),
    (
        json.dumps(
            {"id": "c3", "kind": "code", "response": "no code", "tests": [{"input": "", "output": ""}]}
        ),
        "c3",
        "no_code",
    ),
]


def _check(*args: str) -> list[dict[str, object]]:
    stdin = "\n".join(line for line, _, _ in LINES) + "\n\n"
    result = subprocess.run(
        [sys.executable, "-m", "judge", "check", *args],
        cwd=ROOT, input=stdin, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def _assert_verdicts(verdicts: list[dict[str, object]]) -> None:
    assert [(v["id"], v["status"]) for v in verdicts] == [(ident, status) for _, ident, status in LINES]
    assert all(set(v) == {"id", "reward", "status", "detail", "truncated"} for v in verdicts)
    assert [v["reward"] for v in verdicts] == [int(s in ("correct", "accepted")) for _, _, s in LINES]
    details = {v["id"] or f"line{i}": v["detail"] for i, v in enumerate(verdicts, start=1)}
    assert details["line2"].startswith("line 2: not JSON")
    assert details["m2"] == "line 3: answer: a math request needs the reference answer"
    assert details["line5"] == "line 5: expected a JSON object, got list"
    assert details["e1"].startswith("line 6: kind: Input should be 'math' or 'code'")


def test_check_with_a_local_pool() -> None:
    _assert_verdicts(_check("workers=2"))


@pytest.mark.slow
def test_check_through_a_daemon(daemon: LiveDaemon) -> None:
    _assert_verdicts(_check("--connect", daemon.address))
