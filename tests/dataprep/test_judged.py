"""Converted records through the real judge: right solutions accepted, wrong ones rejected."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from dataprep.convert import converted, packaged_humaneval
from dataprep.records import judge_request
from judge.code_check import judge_code
from judge.sandbox import Sandbox
from tests.dataprep import fixtures
from tests.dataprep.conftest import write_jsonl
from tests.judge_daemon import ROOT


def fenced(source: str) -> str:
    return f"<think>Solve it.</think>\n```python\n{source}\n```\n"


def only_record(fmt: str, path: Path) -> dict[str, Any]:
    (record,) = converted(fmt, path)
    return record


@pytest.mark.parametrize(
    ("row", "right", "wrong"),
    [
        (fixtures.lcb_functional(), fixtures.LCB_FUNCTIONAL_SOLUTION, fixtures.LCB_FUNCTIONAL_WRONG),
        (fixtures.lcb_stdin(), fixtures.LCB_STDIN_SOLUTION, fixtures.LCB_STDIN_WRONG),
    ],
    ids=["functional", "stdin"],
)
def test_livecodebench_records_judged(
    row: dict[str, Any], right: str, wrong: str, sandbox: Sandbox, tmp_path: Path
) -> None:
    record = only_record("livecodebench", write_jsonl(tmp_path / "lcb.jsonl", [row]))
    accepted = judge_code(judge_request(record, fenced(right)), sandbox)
    assert accepted.status == "accepted", accepted.detail
    rejected = judge_code(judge_request(record, fenced(wrong)), sandbox)
    assert rejected.status == "wrong_answer", rejected.detail


@pytest.mark.parametrize(
    ("row", "right", "wrong"),
    [
        (fixtures.APPS_CALL, "def double(x):\n    return x * 2\n", "def double(x):\n    return [x * 2]\n"),
        (fixtures.TACO_CALL, "def pair(a, b):\n    return [a, b]\n", "def pair(a, b):\n    return (b, a)\n"),
        (fixtures.TACO_STDIN, "n = int(input())\nprint(n * n)\n", "n = int(input())\nprint(n + n)\n"),
    ],
    ids=["apps-call", "taco-call", "taco-stdin"],
)
def test_taco_records_judged(
    row: dict[str, Any], right: str, wrong: str, sandbox: Sandbox, tmp_path: Path
) -> None:
    record = only_record("taco", write_jsonl(tmp_path / "taco.jsonl", [row]))
    accepted = judge_code(judge_request(record, fenced(right)), sandbox)
    assert accepted.status == "accepted", accepted.detail
    assert judge_code(judge_request(record, fenced(wrong)), sandbox).status == "wrong_answer"


def humaneval_rows() -> list[dict[str, Any]]:
    with gzip.open(packaged_humaneval(), "rt") as lines:
        return [json.loads(line) for line in lines if line.strip()]


@pytest.mark.slow
def test_all_of_humaneval_through_the_judge() -> None:
    """All 164 canonical solutions accepted; each with its body replaced by `return None` rejected."""
    rows = {row["task_id"]: row for row in humaneval_rows()}
    records = list(converted("humaneval", packaged_humaneval()))
    assert len(records) == 164
    requests = []
    for record in records:
        row = rows[record["id"].removeprefix("humaneval/")]
        right = row["prompt"] + row["canonical_solution"]
        wrong = row["prompt"] + "    return None\n"
        for tag, source in (("right", right), ("wrong", wrong)):
            request = judge_request({**record, "id": f"{tag}:{record['id']}"}, fenced(source))
            requests.append(request.model_dump_json(exclude_none=True))
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "judge", "check", "workers=2"],
        cwd=ROOT, input="\n".join(requests) + "\n", capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    verdicts = [json.loads(line) for line in result.stdout.splitlines()]
    print(f"judged {len(verdicts)} HumanEval requests in {time.monotonic() - started:.1f} s")
    assert len(verdicts) == 2 * 164
    wrongly = [
        (v["id"], v["status"], v["detail"][:200])
        for v in verdicts
        if (v["status"] == "accepted") != v["id"].startswith("right:")
    ]
    assert not wrongly
    rejected = {v["status"] for v in verdicts if v["id"].startswith("wrong:")}
    assert rejected <= {"wrong_answer", "runtime_error"}, rejected
