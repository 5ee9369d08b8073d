"""Resume mid-stage with real processes (launch/supervisor.py, the judge, a vLLM generator, the
DeepSpeed learner): the learner is SIGKILLed after a checkpoint taken mid-stage, with the next
step under way, and `supervisor.py --resume` continues the run. No prompt is trained twice and
none is lost; the prompts after the checkpoint are those an uninterrupted run trains.

What is compared, and why: dynamic sampling is off in both tests. With it on, which prompts
reach a batch depends on the sampled rewards (a group whose completions all score the same is
dropped and another prompt drawn), and a restarted vLLM engine does not sample what the killed
one would have, so two runs would rightly train different prompts. With it off, every prompt
drawn is trained, and the prompts a run trains follow from the seeded epoch order and, across a
resume, from the checkpointed cursor and in-flight list alone.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from learner.orchestration.batch_log import read_batches
from learner.orchestration.run import RunConfig
from learner.orchestration.work_ledger import WorkLedger, work_id
from learner.training import checkpoint
from proto.prompt import load_prompts
from tests.launch import supervised

pytestmark = pytest.mark.slow

STEPS, BATCH, EVERY = 8, 4, 2  # checkpoints at steps 2, 4 and 6: mid-stage


def resume_recipe(path: Path, max_staleness: int) -> Path:
    recipe = supervised.scaled_tiny(generators=1)
    learner = recipe["learner"]
    learner["eval"]["sets"] = []
    learner["checkpoint"] = {"every_steps": EVERY, "keep_last": 3}
    schedule = learner["schedule"]
    schedule["dynamic_sampling"] = False
    schedule["max_staleness"] = max_staleness
    schedule["stages"] = [dict(schedule["stages"][0], steps=STEPS, batch_prompts=BATCH)]
    return supervised.write_recipe(path, recipe)


def epoch_order(run_dir: Path) -> list[str]:
    """The work ids of the run's prompts in the seeded order of the stage's first epoch."""
    cfg = RunConfig.model_validate(yaml.safe_load((run_dir / "learner.yaml").read_text()))
    stage = cfg.schedule.stages[0]
    order = WorkLedger(cfg.schedule, [load_prompts(stage.prompts, stage.kind)]).orders[0]
    return [work_id(0, 0, order.next() or "") for _ in range(STEPS * BATCH)]


def complete_run(recipe: Path, run_dir: Path) -> list[dict[str, Any]]:
    with supervised.SupervisorRun.start(recipe, run_dir) as run:
        code = run.wait(timeout_s=600)
    assert code == 0, run.output[-3000:]
    return read_batches(run_dir)


def kill_the_learner_past_a_checkpoint(
    recipe: Path, run_dir: Path
) -> tuple[list[dict[str, Any]], int, list[str]]:
    """Start a run and SIGKILL its learner once it has trained the first step after a checkpoint;
    (the steps it logged, the step of its newest checkpoint, the work in flight then).

    Running ahead, two steps may be logged within one look at the log: a look that finds the
    learner just past a checkpoint's step kills it; one that finds it further on waits for the
    next checkpoint's."""

    def just_past_a_checkpoint() -> bool:
        logged = run.steps()
        return logged > EVERY and logged % EVERY == 1

    with supervised.SupervisorRun.start(recipe, run_dir) as run:
        assert supervised.wait_for(run, just_past_a_checkpoint, timeout_s=600), run.output[-3000:]
        killed = run.kill("learner")
        code = run.wait(timeout_s=120)
    assert code != 0, "the supervisor should stop the run when its learner dies"
    assert supervised.session_leftovers({c["pid"] for c in run.components().values()} | {killed}) == []
    latest = checkpoint.find_latest(run_dir / "checkpoints")
    assert latest is not None
    state = json.loads((latest / "state.json").read_text())
    before = read_batches(run_dir)
    # mid-stage, and the killed learner trained past it: there is something to roll back
    assert 0 < state["step"] < STEPS and len(before) > state["step"], (state["step"], len(before))
    return before, state["step"], state["extra_state"]["dispatcher"]["pending"]


def resume(run_dir: Path) -> list[dict[str, Any]]:
    with supervised.SupervisorRun.resume(run_dir) as run:
        code = run.wait(timeout_s=600)
    assert code == 0, run.output[-3000:]
    batches = read_batches(run_dir)
    # every step once: what the killed learner logged past its checkpoint was replaced
    steps = [r["step"] for r in supervised.metrics(run_dir)]
    assert [b["step"] for b in batches] == steps == list(range(STEPS))
    trained = [w for b in batches for w in b["work_ids"]]
    assert len(trained) == len(set(trained)), "a prompt was trained twice"
    return batches


def test_strict_resume_trains_the_same_prompts_at_the_same_steps(tmp_path: Path) -> None:
    """Strict staleness: every prompt drawn for a step is trained at that step, so run A
    (uninterrupted) and run B (killed, resumed) must train the same prompts step by step,
    compared as sets (groups arrive in whatever order the generator finishes them). The
    checkpoint is written right after a publish, usually before the next step's work is out:
    what the killed learner had out was drawn after the checkpoint's cursor and is drawn again."""
    recipe = resume_recipe(tmp_path / "strict.yaml", max_staleness=0)
    straight = complete_run(recipe, tmp_path / "straight")
    expected = [set(b["work_ids"]) for b in straight]
    order = epoch_order(tmp_path / "straight")
    assert expected == [set(order[i : i + BATCH]) for i in range(0, len(order), BATCH)]

    run_dir = tmp_path / "killed"
    before, resumed_at, in_flight = kill_the_learner_past_a_checkpoint(recipe, run_dir)
    after = resume(run_dir)
    assert [set(b["work_ids"]) for b in after] == expected  # the same next prompts, step by step
    assert after[:resumed_at] == before[:resumed_at]
    # the steps trained past the checkpoint were rolled back and trained again, with the same prompts
    assert [set(b["work_ids"]) for b in before[resumed_at:]] == expected[resumed_at : len(before)]
    assert set(in_flight) <= set(after[resumed_at]["work_ids"])


def test_run_ahead_resume_trains_what_was_in_flight_first(tmp_path: Path) -> None:
    """`max_staleness: 1`: the next step's work is always out, or back and not yet trained, when
    a checkpoint is written, so the in-flight list is never empty. Which step trains a prompt
    depends on when its group arrives, so the run is compared with the seeded order rather than
    step by step with another run: exactly its first STEPS x BATCH prompts are trained, and what
    was in flight at the checkpoint is trained in the first two steps after the resume, the
    steps the work issued first serves."""
    recipe = resume_recipe(tmp_path / "ahead.yaml", max_staleness=1)
    run_dir = tmp_path / "killed"
    before, resumed_at, in_flight = kill_the_learner_past_a_checkpoint(recipe, run_dir)
    assert in_flight, "nothing was in flight at the checkpoint: the generator did not run ahead"
    after = resume(run_dir)
    assert after[:resumed_at] == before[:resumed_at]
    assert sorted(w for b in after for w in b["work_ids"]) == sorted(epoch_order(run_dir))
    first_two = {w for b in after[resumed_at : resumed_at + 2] for w in b["work_ids"]}
    assert set(in_flight) <= first_two, (in_flight, after[resumed_at : resumed_at + 2])
    assert all(b["step"] - 1 <= v <= b["step"] for b in after for v in b["versions"])
