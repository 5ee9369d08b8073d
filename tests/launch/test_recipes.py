"""Every shipped recipe validates, and the paper's recipes keep the paper's numbers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from judge.config import JudgeConfig
from learner.run import RunConfig
from tests.launch.supervised import ROOT, load_supervisor

supervisor = load_supervisor()


@pytest.mark.parametrize("name", ["tiny", "acereason-7b", "acereason-14b"])
def test_recipe_validates(name: str) -> None:
    recipe = supervisor.load_recipe(ROOT / f"launch/recipes/{name}.yaml", [])
    run = RunConfig.model_validate(
        supervisor.substitute(recipe.learner, {"TINY_MODEL": "m", "TINY_TASKS": "t"})
    )
    JudgeConfig.model_validate(recipe.judge)
    assert run.schedule.max_staleness == 0 and run.grpo.updates_per_batch == 1


@pytest.mark.parametrize("name", ["acereason-7b", "acereason-14b"])
def test_paper_schedule(name: str) -> None:
    recipe = supervisor.load_recipe(ROOT / f"launch/recipes/{name}.yaml", [])
    run = RunConfig.model_validate(recipe.learner)
    stages = run.schedule.stages
    assert [(s.kind, s.max_response_tokens, s.n, s.batch_prompts) for s in stages] == [
        ("math", 8192, 8, 128),
        ("math", 16384, 16, 128),
        ("math", 24576, 16, 128),
        ("code", 24000, 8, 128),
        ("code", 32768, 8, 128),
    ]
    assert {s.learning_rate for s in stages if s.kind == "math"} == {1e-6}
    assert {s.learning_rate for s in stages if s.kind == "code"} == {5e-6}
    assert (stages[-1].n_final, stages[-1].temperature, stages[-1].temperature_final) == (16, 0.6, 1.0)
    assert run.grpo.kl_coef == 0 and run.grpo.entropy_coef == 0
    assert (run.eval.temperature, run.eval.top_p) == (0.6, 0.95)


def test_bad_overrides_name_the_field(tmp_path: Path) -> None:
    with pytest.raises(supervisor.ConfigError, match="generators"):
        supervisor.load_recipe(ROOT / "launch/recipes/tiny.yaml", ["generators=0"])
    recipe = supervisor.load_recipe(ROOT / "launch/recipes/tiny.yaml", ["learner.schedule.max_staleness=-1"])
    with pytest.raises(ValidationError, match=r"schedule\.max_staleness"):
        RunConfig.model_validate(supervisor.substitute(recipe.learner, {}))


def test_servers_bound_off_loopback_are_reached_locally_over_loopback() -> None:
    assert supervisor.local_address("tcp://0.0.0.0:5555") == "tcp://127.0.0.1:5555"
    assert supervisor.local_address("tcp://*:5555") == "tcp://127.0.0.1:5555"
    assert supervisor.local_address("tcp://127.0.0.1:7000") == "tcp://127.0.0.1:7000"
    assert supervisor.local_address("ipc:///tmp/d.ipc") == "ipc:///tmp/d.ipc"


def test_progress_line_shows_the_last_step_and_the_latest_held_out_accuracy(tmp_path: Path) -> None:
    metrics = tmp_path / "metrics.jsonl"
    assert supervisor.progress_line(metrics) == "waiting for the first step"
    records = [
        {"kind": "eval", "step": 0, "task": "math", "k": 4, "accuracy": 0.25},
        {"kind": "eval", "step": 0, "task": "math", "k": 1, "accuracy": 0.5},  # greedy: not shown
        {
            "kind": "train",
            "step": 0,
            "stage_name": "math-44",
            "reward_mean": 0.3,
            "accuracy": 0.2,
            "sampled_accuracy": 0.35,
            "response_len_mean": 20.0,
            "entropy": None,
            "step_s": 1.0,
            "wait_s": 2.0,
        },
        {"kind": "eval", "step": 1, "task": "math", "k": 4, "accuracy": 0.75},
    ]
    metrics.write_text("".join(json.dumps(r) + "\n" for r in records))
    line = supervisor.progress_line(metrics)
    assert line.startswith("step    0  stage math-44  reward 0.300  acc 0.350  len 20  entropy 0.000")
    assert line.endswith("held-out math 0.750")
