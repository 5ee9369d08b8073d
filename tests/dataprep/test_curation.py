"""`acerl data dedup`, `decontaminate` and `select`, through the command line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from dataprep.__main__ import main
from dataprep.select import difficulty_key
from dataprep.templates import code_prompt, math_prompt
from tests.dataprep.conftest import read_jsonl, write_jsonl


def math(ident: str, problem: str) -> dict[str, Any]:
    return {"id": ident, "prompt": math_prompt(problem), "answer": "1"}


def code(ident: str, problem: str, difficulty: object = None, url: str | None = None) -> dict[str, Any]:
    meta = {key: value for key, value in (("difficulty", difficulty), ("url", url)) if value is not None}
    record: dict[str, Any] = {
        "id": ident,
        "prompt": code_prompt(problem),
        "tests": [{"input": "", "output": ""}],
    }
    return {**record, "meta": meta} if meta else record


def files(tmp_path: Path, rows: list[dict], out: Path, report: Path) -> list[str]:
    """--input (the rows, written), --output and --report."""
    return [
        "--input",
        str(write_jsonl(tmp_path / "in.jsonl", rows)),
        "--output",
        str(out),
        "--report",
        str(report),
    ]


def test_dedup_math(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = [
        math("a", "Find  x in \\boxed{}."),
        math("b", "Find  x in \\boxed{}."),  # the same prompt
        {"id": "c", "prompt": "FIND x\nin \\boxed{}.", "answer": "1"},  # no template, case and spacing
        math("d", "Ｆind x in \\boxed{}!"),  # a different problem (NFKC turns Ｆ into F)
        math("e", "Find x in \\boxed{}!"),
    ]
    out, report = tmp_path / "out.jsonl", tmp_path / "report.jsonl"
    args = files(tmp_path, rows, out, report)
    assert main(["dedup", "--kind", "math", *args]) == 0
    assert [r["id"] for r in read_jsonl(out)] == ["a", "d"]
    assert read_jsonl(report) == [
        {"id": "b", "kept_id": "a", "reason": "exact"},
        {"id": "c", "kept_id": "a", "reason": "normalised"},
        {"id": "e", "kept_id": "d", "reason": "normalised"},
    ]
    assert "kept 2 of 5, removed 3 (exact 1, normalised 2, url 0)" in capsys.readouterr().out


def test_dedup_code_by_url(tmp_path: Path) -> None:
    rows = [
        code("p1", "Sum a list.", url="https://x/1"),
        code("p2", "Add up the numbers of a list.", url="https://x/1"),
        code("p3", "Add up the numbers of a list.", url="https://x/2"),
        code("p4", "Something else."),
    ]
    out, report = tmp_path / "out.jsonl", tmp_path / "report.jsonl"
    args = files(tmp_path, rows, out, report)
    assert main(["dedup", "--kind", "code", *args]) == 0
    assert [r["id"] for r in read_jsonl(out)] == ["p1", "p3", "p4"]
    assert read_jsonl(report) == [{"id": "p2", "kept_id": "p1", "reason": "url"}]


def test_decontaminate(tmp_path: Path) -> None:
    evaluation = [
        math("aime/1", "Let x be the number of ordered pairs of positive integers such that x + y = 10.")
    ]
    training = [
        math(
            "t1", "Define x as the number of ordered pairs of positive integers such that a*b = 6."
        ),  # 9 shared
        math("t2", "How many ordered pairs of positive integers sum to 10?"),  # 5 shared words only
        math("t3", "Please reason step by step, and put your final answer within the box."),  # template words
    ]
    against = write_jsonl(tmp_path / "aime.jsonl", evaluation)
    out, report = tmp_path / "out.jsonl", tmp_path / "report.jsonl"
    source = write_jsonl(tmp_path / "in.jsonl", training)
    args = ["--input", str(source), "--against", str(against), "--output", str(out), "--report", str(report)]
    assert main(["decontaminate", "--kind", "math", *args]) == 0
    assert [r["id"] for r in read_jsonl(out)] == ["t2", "t3"]
    assert read_jsonl(report) == [
        {
            "id": "t1",
            "eval_file": str(against),
            "eval_id": "aime/1",
            "ngram": "the number of ordered pairs of positive integers such",
        }
    ]
    # Punctuation is a token of its own; a shorter n finds the 5-word overlap too.
    assert main(["decontaminate", "--kind", "math", *args, "--n", "5"]) == 0
    assert [r["id"] for r in read_jsonl(out)] == ["t3"]


def test_decontaminate_code_ignores_the_template(tmp_path: Path) -> None:
    evaluation = [code("lcb/1", "Print the answer.")]
    training = [code("c1", "Print the sum.")]  # both share the 30-word stdin instruction only
    against = write_jsonl(tmp_path / "lcb.jsonl", evaluation)
    out, report = tmp_path / "out.jsonl", tmp_path / "report.jsonl"
    source = write_jsonl(tmp_path / "in.jsonl", training)
    args = ["--input", str(source), "--against", str(against), "--output", str(out), "--report", str(report)]
    assert main(["decontaminate", "--kind", "code", *args, "--n", "3"]) == 0
    assert [r["id"] for r in read_jsonl(out)] == ["c1"] and read_jsonl(report) == []


def passrates(tmp_path: Path, rates: list[tuple[str, int, int]]) -> Path:
    return write_jsonl(tmp_path / "rates.jsonl", [{"id": i, "n": n, "correct": c} for i, n, c in rates])


def test_select_math_by_pass_rate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = [math(ident, f"Problem {ident}.") for ident in ("a", "b", "c", "d", "e")]
    rates = passrates(tmp_path, [("a", 16, 0), ("b", 16, 6), ("c", 16, 7), ("d", 8, 3), ("e", 8, 4)])
    out, report = tmp_path / "out.jsonl", tmp_path / "report.json"
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    args = ["--kind", "math", "--prompts", str(source), "--passrate", str(rates), "--output", str(out)]
    assert main(["select", *args, "--report", str(report)]) == 0
    assert [r["id"] for r in read_jsonl(out)] == ["a", "b", "d"]  # 3/8 <= 6/16 < 4/8
    assert read_jsonl(report) == [{"input": 5, "kept": 3, "dropped": {"too_easy": 2}}]
    assert main(["select", *args, "--drop-unsolved", "--max-correct", "14"]) == 0
    assert [r["id"] for r in read_jsonl(out)] == ["b", "c", "d", "e"]
    capsys.readouterr()
    missing = passrates(tmp_path, [("a", 16, 0)])
    assert (
        main(
            [
                "select",
                "--kind",
                "math",
                "--prompts",
                str(source),
                "--passrate",
                str(missing),
                "--output",
                str(out),
            ]
        )
        == 2
    )
    assert "'b' has no pass rate" in capsys.readouterr().err


def test_select_code_by_difficulty_and_pass_rate(tmp_path: Path) -> None:
    rows = [
        code("lcb-easy", "p1", "easy"),
        code("lcb-hard", "p2", "hard"),
        code("taco-mh", "p3", "MEDIUM_HARD"),
        code("apps-intro", "p4", "introductory"),
        code("unknown", "p5", "UNKNOWN_DIFFICULTY"),
        code("level-3", "p6", 3),
    ]
    out = tmp_path / "out.jsonl"
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    args = ["select", "--kind", "code", "--prompts", str(source), "--output", str(out)]
    assert main([*args, "--max-difficulty", "MEDIUM_HARD"]) == 0
    assert [r["id"] for r in read_jsonl(out)] == ["lcb-easy", "taco-mh", "apps-intro"]
    assert main([*args, "--max-difficulty", "5"]) == 0
    assert [r["id"] for r in read_jsonl(out)] == ["level-3"]
    rates = passrates(tmp_path, [(r["id"], 8, 8 if r["id"] == "lcb-easy" else 2) for r in rows])
    assert main([*args, "--max-difficulty", "medium", "--passrate", str(rates)]) == 0
    assert [r["id"] for r in read_jsonl(out)] == ["apps-intro"]  # lcb-easy: every try solved it
    assert difficulty_key("Very Hard") == ("rank", 5.0) and difficulty_key(None) is None
