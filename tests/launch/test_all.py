"""The main job end to end: `launch/all.sh` (the supervisor, launch/supervisor.py) with the real judge,
real vLLM generators and the real DeepSpeed learner on a scaled-down tiny recipe. A generator is
SIGKILLed mid-run, then the judge: the run still completes, both are restarted, no prompt is lost
or trained twice, and nothing is trained with a reward the judge did not give."""

from __future__ import annotations

from pathlib import Path

import pytest

from learner.orchestration.batch_log import read_batches
from proto.judge import UNJUDGED_STATUSES
from tests.launch.supervised import (
    SupervisorRun,
    metrics,
    scaled_tiny,
    session_leftovers,
    wait_for,
    write_recipe,
)

pytestmark = pytest.mark.slow


def smoke_recipe(path: Path) -> Path:
    recipe = scaled_tiny(generators=2)
    learner = recipe["learner"]
    learner["checkpoint"] = {"every_steps": 2, "keep_last": 2}
    learner["eval"]["sets"] = [dict(s, limit=8) for s in learner["eval"]["sets"]]
    # a few steps of every stage of the recipe: math-44, math-52, math-60, code-64, code-80
    steps = [2, 1, 1, 2, 1]
    stages = learner["schedule"]["stages"]
    assert len(stages) == len(steps), "the tiny recipe's stages changed: update the smoke schedule"
    learner["schedule"]["stages"] = [
        dict(s, steps=n, batch_prompts=4) for s, n in zip(stages, steps, strict=True)
    ]
    return write_recipe(path, recipe)


def test_a_tiny_run_survives_a_killed_generator(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    killed: dict[str, int] = {}
    with SupervisorRun.start(smoke_recipe(tmp_path / "smoke.yaml"), run_dir) as run:

        def kill_when_trained() -> bool:
            if run.steps() >= 1 and "generator1" not in killed:
                killed["generator1"] = run.kill("generator1")
            if run.steps() >= 2 and "judge" not in killed:
                killed["judge"] = run.kill("judge")
            return False  # on to the end of the run

        wait_for(run, kill_when_trained, timeout_s=900, every_s=0.5)
        code = run.wait(timeout_s=60)
    assert code == 0, run.output[-3000:]
    assert set(killed) == {"generator1", "judge"}, "the run ended before its components could be killed"

    components = run.components()
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
        "step_time.png",
        "entropy.png",
        "logs/learner.log",
        "logs/judge.log",
        "logs/generator0.log",
        "logs/generator1.log",
    ):
        assert (run_dir / name).is_file(), name
    assert list((run_dir / "tensorboard").iterdir()) and list((run_dir / "checkpoints").iterdir())

    train = metrics(run_dir)
    assert [r["step"] for r in train] == list(range(7))
    for r in train:
        assert r["sample_versions"] == [r["step"], r["step"]] and r["policy_version"] == r["step"]
        for key in (
            "reward_mean",
            "accuracy",
            "response_len_mean",
            "truncated_frac",
            "zero_var_frac",
            "sampled_accuracy",
            "entropy",
            "logprob_mismatch",
            "step_s",
            "tokens_per_s",
            "stage",
        ):
            assert key in r, key
    evals = metrics(run_dir, "eval")
    # before RL and after every stage
    points = (0, 2, 3, 4, 6, 7)
    assert {(r["step"], r["task"]) for r in evals} == {(s, t) for s in points for t in ("math", "code")}
    assert all(0 <= r["accuracy"] <= 1 for r in evals)

    batches = read_batches(run_dir)
    trained = [w for b in batches for w in b["work_ids"]]
    assert len(trained) == len(set(trained)), "a prompt was trained twice"
    assert [b["stage"] for b in batches] == [0, 0, 1, 2, 3, 3, 4]
    assert [r["task"] for r in train] == ["math"] * 4 + ["code"] * 3
    assert all(w.startswith(f"{b['stage']}/") for b in batches for w in b["work_ids"])
    # while the judge was down nothing was trained with a made-up reward
    statuses = {status for b in batches for status in b["statuses"]}
    assert not statuses & UNJUDGED_STATUSES, statuses
    # nothing of the run is left: no process in any component's session, the killed ones included
    sessions = {c["pid"] for c in components.values()} | set(killed.values())
    stray = session_leftovers(sessions)
    assert stray == [], f"processes of the run left behind: {stray}"
