"""The run report: held-out accuracy per evaluation point, gains per task, plots and timings."""

from __future__ import annotations

import json
from pathlib import Path

from learner.report import write_report


def test_report_tables_gains_and_plots(tmp_path: Path) -> None:
    records = []
    accuracy = {"math": [0.30, 0.45, 0.50, 0.52], "code": [0.60, 0.58, 0.61, 0.80]}
    # evaluations at steps 0 (before RL), 2 (after math-a), 4 (after math-b), 6 (after code)
    for point, (step, stage_name) in enumerate(((0, "math-a"), (2, "math-a"), (4, "math-b"), (6, "code"))):
        for task in ("math", "code"):
            records.append(
                {
                    "kind": "eval",
                    "step": step,
                    "stage_name": stage_name,
                    "task": task,
                    "k": 4,
                    "temperature": 0.6,
                    "accuracy": accuracy[task][point],
                    "n": 10,
                    "eval_s": 1.5,
                }
            )
    for step, (stage_name, task) in enumerate(
        [("math-a", "math")] * 2 + [("math-b", "math")] * 2 + [("code", "code")] * 2
    ):
        records.append(
            {
                "kind": "train",
                "step": step,
                "stage_name": stage_name,
                "task": task,
                "reward_mean": 0.1 * step,
                "accuracy": 0.2,
                "sampled_accuracy": 0.1 * step,
                "response_len_mean": 10 + step,
                "response_len_max": 20,
                "entropy": 1.0,
                "step_s": 0.5,
                "stream_s": 0.3,
                "wait_s": 1.0,
                "generator_groups": {"g0": 3, "g1": step},
                "generator_tokens": {"g0": 30, "g1": 10 * step},
                "reload_s": 0.1,
                "generate_s": 0.6,
                "judge_s": 0.2,
                "return_s": 0.1,
                "publish_s": 0.1,
                "tokens_per_s": 100.0,
            }
        )
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    report = write_report(tmp_path, {"building the tiny default": 12.0}).read_text()
    assert "| 0 | before RL | 0.600 | 0.300 |" in report  # columns sorted: code avg@4, math avg@4
    assert "| 4 | after math-b | 0.610 | 0.500 |" in report
    # math: before its first stage (step 0) and after its last (step 4); code: steps 4 -> 6
    assert "- math: 0.300 before its stages, 0.500 after them (+20.0 points)" in report
    assert "- code: 0.610 before its stages, 0.800 after them (+19.0 points)" in report
    assert "| math-b | 2 | 0.200 → 0.300 |" in report
    assert "| building the tiny default | 12 |" in report
    assert "| held-out evaluation (8 evaluations) | 12 |" in report
    assert "| of it: avg@4 (8) | 12 |" in report
    # per step: train after the wait and during it, wait, and the wait's parts
    assert "| 100 | 0.50 | 0.30 | 1.00 | 0.10 | 0.60 | 0.20 | 0.10 |" in report
    steps = len([r for r in records if r["kind"] == "train"])
    g1 = sum(r["generator_groups"]["g1"] for r in records if r["kind"] == "train")
    assert f"| g0 | {3 * steps} | {30 * steps} | 3-3 |" in report
    assert f"| g1 | {g1} | {10 * g1} | 0-{steps - 1} |" in report
    for name in ("reward", "response_length", "entropy", "heldout_accuracy", "step_time"):
        assert (tmp_path / f"{name}.png").stat().st_size > 1000
