"""`acerl eval` and `acerl data passrate` end to end, with the real judge and a real vLLM generator:
the standalone evaluation of the tiny warm start agrees, prompt by prompt, with the numbers the
training run gives the same weights before its first step."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.judge_daemon import judge_daemon
from tests.launch.supervised import ROOT, SupervisorRun, scaled_tiny, write_recipe

pytestmark = pytest.mark.slow
LIMIT = 24


def acerl(*args: str, timeout_s: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "launch.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


def rows(path: Path) -> dict[str, dict]:
    return {r["id"]: r for r in map(json.loads, path.read_text().splitlines())}


def test_acerl_eval_agrees_with_the_evaluation_inside_training(tmp_path: Path) -> None:
    recipe = scaled_tiny(generators=1)
    recipe["learner"]["eval"]["sets"] = [dict(s, limit=LIMIT) for s in recipe["learner"]["eval"]["sets"]]
    recipe_path = write_recipe(tmp_path / "recipe.yaml", recipe)
    run_dir = tmp_path / "run"
    with SupervisorRun.start(recipe_path, run_dir, "--max-steps", "0") as run:
        assert run.wait(timeout_s=900) == 0, run.output[-3000:]
    trained = rows(run_dir / "eval/step000000-math_heldout-greedy/per_prompt.jsonl")
    assert len(trained) == LIMIT
    heldout = Path(yaml.safe_load((run_dir / "learner.yaml").read_text())["eval"]["sets"][0]["prompts"])

    out = tmp_path / "eval"
    done = acerl(
        "eval", "--recipe", str(recipe_path), "--prompts", str(heldout), "--limit", str(LIMIT),
        "--k", "1", "--temperature", "0", "--out", str(out), "generators=1",
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    alone = rows(out / "per_prompt.jsonl")
    assert alone.keys() == trained.keys()
    # greedy with the same weights: the same answers, up to a near-tie flipped by batch numerics
    same = sum(alone[i]["correct"] == trained[i]["correct"] for i in alone)
    assert same >= LIMIT - 2, f"{same} of {LIMIT} prompts scored alike"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["task"] == "math" and summary["k"] == 1 and summary["temperature"] == 0
    assert summary["avg@1"] == pytest.approx(sum(r["pass1"] for r in alone.values()) / LIMIT)
    assert "avg@1" in done.stderr + done.stdout

    # pass rates, judged by a judge already running (a standalone verification service)
    passrate = tmp_path / "passrate.jsonl"
    judge = judge_daemon("tcp://127.0.0.1:0", workers=1)
    try:
        done = acerl(
            "data", "passrate", "--recipe", str(recipe_path), "--prompts", str(heldout), "--limit", "6",
            "--n", "4", "--output", str(passrate), "--judge", judge.address, "generators=1",
        )  # fmt: skip
    finally:
        judge.stop()
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"using the judge at {judge.address}" in done.stdout + done.stderr
    # the running judge gave the verdicts: its closing counts hold them
    stats = [line for line in judge.log if "judge_stats" in line]
    assert stats and ("correct" in stats[-1] or "wrong_answer" in stats[-1]), judge.tail()
    lines = [json.loads(line) for line in passrate.read_text().splitlines()]
    assert [set(line) for line in lines] == [{"id", "n", "correct"}] * 6
    assert all(line["n"] == 4 and 0 <= line["correct"] <= 4 for line in lines)
    assert [line["id"] for line in lines] == list(trained)[:6]


def test_acerl_eval_names_a_missing_model(tmp_path: Path) -> None:
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"id": "a", "prompt": "1 + 1", "answer": "2"}) + "\n")
    done = acerl("eval", "--model", str(tmp_path / "nowhere"), "--prompts", str(prompts), timeout_s=300)
    assert done.returncode == 2
    assert "--model" in done.stdout + done.stderr and "nowhere" in done.stdout + done.stderr
