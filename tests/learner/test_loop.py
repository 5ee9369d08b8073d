"""`learner train` is a batch source for the one training loop: a step that trains no token counts
like any other, so the file is read on and the run ends (it used to read the same step forever)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import structlog

from learner.__main__ import main
from learner.training import checkpoint
from learner.training.rollout_file import write_groups
from tests.learner.rollouts import mixed_batch

pytestmark = pytest.mark.slow


def test_a_step_without_signal_counts_and_the_file_reads_on(tiny_model_dir: Path, tmp_path: Path) -> None:
    flat = [g for g in mixed_batch() if g.work_id in ("c-all-right", "d-all-wrong", "e-unjudged")]
    signal = [g for g in mixed_batch(seed=1) if g.work_id in ("a", "b", "f")]
    rollouts = tmp_path / "groups.bin"
    write_groups(rollouts, flat + signal)  # step 0 trains no token, step 1 does
    run_dir = tmp_path / "run"
    try:
        code = main(["train", "--rollouts", str(rollouts), "--groups-per-step", "3", "--steps", "3",
                     f"model.path={tiny_model_dir}", f"run_dir={run_dir}", "metrics.tensorboard=false",
                     "checkpoint.every_steps=3", "checkpoint.hf_model=false"])  # fmt: skip
    finally:
        structlog.reset_defaults()
    assert code == 0
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["trained"], r["policy_version"], r["new_version"]) for r in lines] == [
        (0, False, 0, 1),
        (1, True, 1, 2),
        (2, False, 2, 3),  # the file again, from its start
    ]
    assert lines[0]["groups_unjudged"] == 1 and lines[0]["groups_zero_var"] == 2 and lines[0]["loss"] is None
    latest = checkpoint.find_latest(run_dir / "checkpoints")
    assert latest is not None and latest.name == "step_000000003"
    state = json.loads((latest / checkpoint.STATE).read_text())
    assert (state["step"], state["policy_version"], state["extra_state"]) == (3, 3, {"command": "train"})
