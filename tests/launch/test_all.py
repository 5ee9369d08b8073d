"""The main job end to end: `launch/supervisor.py` (what launch/all.sh runs) with the real judge,
real vLLM generators and the real DeepSpeed learner on a scaled-down tiny recipe. A generator is
SIGKILLed mid-run, then the judge: the run still completes, both are restarted, no prompt is lost
or trained twice, and nothing is trained with a reward the judge did not give."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from learner.batch_log import read_batches
from proto.judge import UNJUDGED_STATUSES

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def smoke_recipe(path: Path) -> Path:
    recipe = yaml.safe_load((ROOT / "launch/recipes/tiny.yaml").read_text())
    recipe["tiny"].update(math_prompts=300, code_prompts=100, warm_start_steps=30)
    recipe["generators"] = 2
    recipe["ready_timeout_s"] = 300
    learner = recipe["learner"]
    learner["checkpoint"] = {"every_steps": 2, "keep_last": 2}
    learner["eval"]["sets"] = [dict(s, limit=8) for s in learner["eval"]["sets"]]
    stages = learner["schedule"]["stages"]
    learner["schedule"]["stages"] = [
        dict(stages[0], steps=3, batch_prompts=4),
        dict(stages[3], steps=2, batch_prompts=4),
    ]
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_a_tiny_run_survives_a_killed_generator(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    recipe = smoke_recipe(tmp_path / "smoke.yaml")
    supervisor = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "launch/supervisor.py"),
            "--recipe",
            str(recipe),
            "--run-dir",
            str(run_dir),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    killed: dict[str, int] = {}
    deadline = time.monotonic() + 900

    def kill(name: str) -> None:
        victim = next(c for c in json.loads((run_dir / "components.json").read_text()) if c["name"] == name)
        os.kill(victim["pid"], signal.SIGKILL)
        killed[name] = victim["pid"]

    try:
        while supervisor.poll() is None and time.monotonic() < deadline:
            metrics = run_dir / "metrics.jsonl"
            steps = metrics.read_text().count('"kind": "train"') if metrics.exists() else 0
            if steps >= 1 and "generator1" not in killed:
                kill("generator1")
            if steps >= 2 and "judge" not in killed:
                kill("judge")
            time.sleep(0.5)
        output = supervisor.communicate(timeout=60)[0]
    finally:
        if supervisor.poll() is None:
            supervisor.send_signal(signal.SIGTERM)
            supervisor.wait(timeout=60)
    assert supervisor.returncode == 0, output[-3000:]
    assert set(killed) == {"generator1", "judge"}, "the run ended before its components could be killed"

    components = {c["name"]: c for c in json.loads((run_dir / "components.json").read_text())}
    for name, pid in killed.items():
        assert components[name]["restarts"] == 1 and components[name]["pid"] != pid
    for name in (
        "config.yaml",
        "components.json",
        "metrics.jsonl",
        "batches.jsonl",
        "report.md",
        "reward.png",
        "heldout_accuracy.png",
        "response_length.png",
        "entropy.png",
        "logs/learner.log",
        "logs/judge.log",
        "logs/generator0.log",
        "logs/generator1.log",
    ):
        assert (run_dir / name).is_file(), name
    assert list((run_dir / "tensorboard").iterdir()) and list((run_dir / "checkpoints").iterdir())

    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    assert [r["step"] for r in train] == list(range(5))
    for r in train:
        assert r["sample_versions"] == [r["step"], r["step"]] and r["policy_version"] == r["step"]
        for key in (
            "reward_mean",
            "accuracy",
            "response_len_mean",
            "truncated_frac",
            "zero_var_frac",
            "entropy",
            "logprob_mismatch",
            "step_s",
            "tokens_per_s",
            "stage",
        ):
            assert key in r, key
    evals = [r for r in records if r["kind"] == "eval"]
    assert {(r["step"], r["task"]) for r in evals} == {(s, t) for s in (0, 3, 5) for t in ("math", "code")}
    assert all(0 <= r["accuracy"] <= 1 for r in evals)

    batches = read_batches(run_dir)
    trained = [w for b in batches for w in b["work_ids"]]
    assert len(trained) == len(set(trained)), "a prompt was trained twice"
    assert [b["stage"] for b in batches] == [0, 0, 0, 1, 1]
    assert all(w.startswith(f"{b['stage']}/") for b in batches for w in b["work_ids"])
    # while the judge was down nothing was trained with a made-up reward
    statuses = {status for b in batches for status in b["statuses"]}
    assert not statuses & UNJUDGED_STATUSES, statuses
    # nothing of the run is left: no process in any component's session, the killed ones included
    sessions = {c["pid"] for c in components.values()} | set(killed.values())
    left = subprocess.run(["ps", "-e", "-o", "pid=,sid=,comm="], capture_output=True, text=True).stdout
    stray = [line for line in left.splitlines() if int(line.split()[1]) in sessions]
    assert stray == [], f"processes of the run left behind: {stray}"
