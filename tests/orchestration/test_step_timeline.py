"""A step's wait, cut into parts from its groups' wall-clock stamps."""

from __future__ import annotations

from learner.orchestration.step_timeline import wait_parts
from proto.rollout import RolloutGroup
from tests.learner.rollouts import completion
from tests.learner.rollouts import group as rollout_group


def group(**timings: float) -> RolloutGroup:
    return rollout_group("0/0/p0", [1, 2], [completion([1], 1.0)]).model_copy(update={"timings": timings})


def test_the_parts_run_from_the_first_start_to_the_last_verdict_and_add_up_to_the_wait() -> None:
    groups = [
        group(started_at=100.5, sampled_at=101.0, judged_at=101.2),
        group(started_at=100.7, sampled_at=102.0, judged_at=102.6),
    ]
    parts = wait_parts(groups, waited_from=100.0, ready_at=103.0)
    assert parts == {"reload_s": 0.5, "generate_s": 1.5, "judge_s": 0.6, "return_s": 0.4}


def test_work_begun_before_the_wait_counts_from_its_start() -> None:
    # sampled during an evaluation, before the learner began to wait: no reload, a shorter generate
    parts = wait_parts([group(started_at=90.0, sampled_at=101.0, judged_at=100.5)], 100.0, 102.0)
    assert parts == {"reload_s": 0.0, "generate_s": 1.0, "judge_s": 0.0, "return_s": 1.0}
    assert sum(parts.values()) == 2.0


def test_groups_without_stamps_leave_the_parts_out() -> None:
    stamped = group(started_at=100.5, sampled_at=101.0, judged_at=101.2)
    assert wait_parts([stamped, group(queue=0.1, generate=0.5)], 100.0, 102.0) == {}
    assert wait_parts([], 100.0, 102.0) == {}
