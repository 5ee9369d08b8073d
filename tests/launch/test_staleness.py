"""`max_staleness: 1` against the strict default, with real processes (launch/supervisor.py, the
judge, a vLLM generator, the DeepSpeed learner): every trained sample is at most one version
old, and letting the generator run ahead does not cost throughput."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from learner.orchestration.batch_log import read_batches
from tests.launch.supervised import SupervisorRun, metrics, scaled_tiny, warnings, write_recipe

pytestmark = pytest.mark.slow

STEPS = 10
BATCH = 4
# Two runs one after the other on a shared, busy machine: the run-ahead one must reach this share
# of the strict one's throughput. Measured on 2 cores: 1.4x to 2.2x, and 0.95x when other jobs
# took every core (sampling ahead then slows the learner's step as much as it hides the wait).
# The slack is for such noise, not for a slowdown.
TOLERANCE = 0.8


def staleness_recipe(path: Path, max_staleness: int) -> Path:
    recipe = scaled_tiny(generators=1)
    learner = recipe["learner"]
    learner["eval"]["sets"] = []  # nothing but training in either run
    learner["checkpoint"] = {"every_steps": 0}
    schedule = learner["schedule"]
    schedule["max_staleness"] = max_staleness
    schedule["stages"] = [dict(schedule["stages"][0], steps=STEPS, batch_prompts=BATCH)]
    return write_recipe(path, recipe)


def steps_per_s(train: list[dict[str, Any]]) -> float:
    """Over the training phase only: from the end of the first step to the end of the last, so
    that start-up (engines, the first batch) is left out; each end is stamped after the publish."""
    return (len(train) - 1) / (train[-1]["time"] - train[0]["time"])


def test_staleness_one_trains_samples_at_most_one_version_old_and_is_not_slower(tmp_path: Path) -> None:
    throughput: dict[int, float] = {}
    logged: dict[int, str] = {}
    for staleness in (0, 1):
        run_dir = tmp_path / f"staleness{staleness}"
        recipe = staleness_recipe(tmp_path / f"staleness{staleness}.yaml", staleness)
        with SupervisorRun.start(recipe, run_dir) as run:
            code = run.wait(timeout_s=600)
        assert code == 0, run.output[-3000:]

        # the versions as the learner recorded them (metrics.jsonl, batches.jsonl), not the gate's counts
        train, batches = metrics(run_dir), read_batches(run_dir)
        assert [r["step"] for r in train] == [b["step"] for b in batches] == list(range(STEPS))
        for record, batch in zip(train, batches, strict=True):
            step = record["step"]
            assert record["policy_version"] == step
            low, high = record["sample_versions"]
            assert step - staleness <= low <= high <= step, record
            assert all(step - staleness <= v <= step for v in batch["versions"]), batch
        trained = [w for b in batches for w in b["work_ids"]]
        assert len(trained) == len(set(trained)), "a prompt was trained twice"
        if staleness == 1:
            # ...and the bound is not met by accident: the generator did run ahead
            assert any(min(b["versions"]) == b["step"] - 1 for b in batches), batches
        throughput[staleness] = steps_per_s(train)
        logged[staleness] = warnings(run_dir)

    figures = [f"max_staleness {k}: {v:.3f} steps/s, {v * BATCH:.2f} groups/s" for k, v in throughput.items()]
    print(f"\ntraining throughput: {'; '.join(figures)}; ratio {throughput[1] / throughput[0]:.2f}")
    shown = f"{throughput}\nwarnings of the run-ahead run:\n{logged[1]}"
    assert throughput[1] >= TOLERANCE * throughput[0], shown
