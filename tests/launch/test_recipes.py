"""Every shipped recipe validates, the paper's recipes keep the paper's numbers, a bad recipe is
refused with the field, file and line, and `acerl run --dry-run` shows what a run would start."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from launch.recipe import load_recipe
from launch.supervisor import local_address, progress_line
from proto.config import ConfigError
from tests.launch.supervised import ROOT

RECIPES = ["tiny", "acereason-7b", "acereason-14b"]


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_validates(name: str) -> None:
    recipe = load_recipe(ROOT / f"launch/recipes/{name}.yaml", [])
    assert recipe.learner.schedule.max_staleness == 0 and recipe.learner.grpo.updates_per_batch == 1
    assert "${" not in str(recipe.learner.model.path)  # the tiny default's names are filled in


@pytest.mark.parametrize("name", ["acereason-7b", "acereason-14b"])
def test_paper_schedule(name: str) -> None:
    run = load_recipe(ROOT / f"launch/recipes/{name}.yaml", []).learner
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


def test_bad_overrides_name_the_field() -> None:
    tiny = ROOT / "launch/recipes/tiny.yaml"
    with pytest.raises(ConfigError, match="generators: Input should be greater than or equal to 0"):
        load_recipe(tiny, ["generators=-1"])
    with pytest.raises(ConfigError, match=r"learner\.schedule\.max_staleness: "):
        load_recipe(tiny, ["learner.schedule.max_staleness=-1"])
    with pytest.raises(ConfigError, match=r"no field 'lr' in learner\.grpo"):
        load_recipe(tiny, ["learner.grpo.lr=1"])
    recipe = load_recipe(tiny, ["learner.schedule.stages.1.steps=3", "learner.optim.lr=1e-3"])
    assert recipe.learner.schedule.stages[1].steps == 3 and recipe.learner.optim.lr == 1e-3


def test_a_bad_value_in_the_file_names_its_line(tmp_path: Path) -> None:
    text = (
        (ROOT / "launch/recipes/tiny.yaml")
        .read_text()
        .replace("max_zero_variance_batches: 1", "max_zero_variance_batches: -1")
    )
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    line = next(i for i, row in enumerate(text.splitlines(), 1) if "max_zero_variance_batches: -1" in row)
    with pytest.raises(
        ConfigError, match=rf"bad\.yaml, line {line}: learner\.schedule\.max_zero_variance_batches"
    ):
        load_recipe(path, [])


def test_a_duplicate_key_is_refused_with_both_lines(tmp_path: Path) -> None:
    path = tmp_path / "twice.yaml"
    path.write_text("prepare: tiny\ngenerators: 1\nprepare: none\nlearner: {}\n")
    with pytest.raises(ConfigError, match=r"twice\.yaml, line 3: duplicate key prepare \(first at line 1\)"):
        load_recipe(path, [])


def test_an_unknown_key_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "unknown.yaml"
    path.write_text((ROOT / "launch/recipes/tiny.yaml").read_text() + "generatorz: 2\n")
    with pytest.raises(ConfigError, match="generatorz: Extra inputs are not permitted"):
        load_recipe(path, [])


@pytest.mark.parametrize("name", RECIPES)
def test_dry_run_prints_every_config_and_command_and_starts_nothing(name: str, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-m", "launch.cli", "run", "--dry-run", "--recipe", f"launch/recipes/{name}.yaml",
         "--run-dir", str(run_dir), "learner.optim.lr=2e-6"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    out = done.stdout
    recipe = load_recipe(ROOT / f"launch/recipes/{name}.yaml", [])
    for component in ["judge", "learner", *(f"generator{i}" for i in range(recipe.generators))]:
        assert f"# {component}: " in out
    assert " -m judge serve --config " in out and " -m learner run --config " in out
    assert "lr: 2.0e-06" in out  # the override reached the learner's resolved config
    assert "schedule:" in out and "sandbox:" in out and "credits:" in out
    assert [p.name for p in run_dir.iterdir()] == ["plan.json"]  # the plan written, nothing started


def test_servers_bound_off_loopback_are_reached_locally_over_loopback() -> None:
    assert local_address("tcp://0.0.0.0:5555") == "tcp://127.0.0.1:5555"
    assert local_address("tcp://*:5555") == "tcp://127.0.0.1:5555"
    assert local_address("tcp://127.0.0.1:7000") == "tcp://127.0.0.1:7000"
    assert local_address("ipc:///tmp/d.ipc") == "ipc:///tmp/d.ipc"


def test_progress_line_shows_the_last_step_and_the_latest_held_out_accuracy(tmp_path: Path) -> None:
    from learner.metrics import EvalRecord, TrainRecord, read_records

    metrics = tmp_path / "metrics.jsonl"
    assert progress_line(metrics) == "waiting for the first step"
    written = tmp_path / "written.jsonl"
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
    written.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert {type(r) for r in read_records(written)} <= {TrainRecord, EvalRecord}
    line = progress_line(written)
    assert line.startswith("step    0  stage math-44  reward 0.300  acc 0.350  len 20  entropy 0.000")
    assert line.endswith("held-out math 0.750")
