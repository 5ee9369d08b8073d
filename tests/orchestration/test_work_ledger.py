"""The work ledger's rules, driven directly with a fake clock (no sockets, no engines)."""

from __future__ import annotations

from pathlib import Path

import pytest

from learner.orchestration.schedule import Schedule, Stage
from learner.orchestration.work_ledger import WorkLedger, split_work_id
from proto.judge import TestCase as Case
from proto.prompt import CodePrompt, MathPrompt, Prompt
from proto.rollout import Completion, RolloutGroup
from proto.work import WorkItem


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def math_prompts(count: int) -> list[Prompt]:
    return [MathPrompt(id=f"m{i}", prompt=f"{i} + 1 = ?", answer=str(i + 1)) for i in range(count)]


def code_prompts(count: int) -> list[Prompt]:
    return [
        CodePrompt(id=f"c{i}", prompt=f"print {i}", tests=[Case(input="", output=str(i))])
        for i in range(count)
    ]


def stage(name: str, kind: str = "math", steps: int = 3, batch: int = 4, n: int = 2, **extra) -> Stage:
    return Stage(
        name=name,
        kind=kind,
        prompts=Path(f"{name}.jsonl"),
        steps=steps,
        max_response_tokens=16,
        batch_prompts=batch,
        n=n,
        learning_rate=1e-6,
        **extra,
    )


def ledger(
    stages: list[Stage], sets: list[list[Prompt]], clock: Clock | None = None, **schedule
) -> WorkLedger:
    return WorkLedger(Schedule(stages=stages, lease_s=10, **schedule), sets, clock=clock or Clock())


def answer(
    item: WorkItem,
    rewards: list[float] | None = None,
    version: int | None = None,
    status: str | None = None,
    generator: str = "g0",
) -> RolloutGroup:
    rewards = rewards if rewards is not None else [1.0] + [0.0] * (item.sampling.n - 1)
    completions = [
        Completion(
            token_ids=[1, 2],
            logprobs=[-0.1, -0.2],
            finish_reason="stop",
            truncated=False,
            reward=r,
            judge_status=status or ("correct" if r == 1 else "wrong_answer"),
        )
        for r in rewards
    ]
    return RolloutGroup(
        work_id=item.id,
        kind=item.kind,
        stage=item.stage,
        policy_version=item.policy_version if version is None else version,
        temperature=item.sampling.temperature,
        generator_id=generator,
        attempt=item.attempt,
        prompt_token_ids=[5],
        completions=completions,
    )


def test_strict_mode_issues_one_batch_per_version() -> None:
    book = ledger([stage("m", steps=2)], [math_prompts(20)])
    items = book.issue("g0", 100)
    assert len(items) == 4 and {i.policy_version for i in items} == {0}
    assert book.issue("g0", 100) == []  # the batch is fully out
    for item in items:
        assert book.accept(answer(item)) == "accepted"
    batch, cancel = book.take_batch()
    assert [g.work_id for g in batch.trained] == [i.id for i in items] and cancel == {}
    assert book.issue("g0", 100) == []  # strictly on-policy: nothing until version 1 is out
    book.publish(1)
    items = book.issue("g0", 100)
    assert len(items) == 4 and {i.policy_version for i in items} == {1}


def test_staleness_one_lets_generators_run_ahead() -> None:
    book = ledger([stage("m", steps=3)], [math_prompts(40)], max_staleness=1)
    first = book.issue("g0", 100)
    assert len(first) == 8  # two batches' worth of version 0
    for item in first:
        book.accept(answer(item))
    batch0, _ = book.take_batch()
    assert book.issue("g0", 100) == []  # step 1's batch is already in hand
    batch1, _ = book.take_batch()  # version 0 is admissible at step 1
    assert {g.policy_version for g in batch0.groups + batch1.groups} == {0}
    assert book.take_batch() is None and book.issue("g0", 100) == []  # version 0 is too old for step 2
    book.publish(1)
    assert {i.policy_version for i in book.issue("g0", 100)} == {1}


def test_newer_work_waits_until_a_generator_has_returned_its_older_work() -> None:
    book = ledger([stage("m", steps=4)], [math_prompts(40)], max_staleness=1)
    first = book.issue("g0", 100)
    assert len(first) == 8
    for item in first[:4]:
        book.accept(answer(item))
    book.take_batch()  # step 0 trains while g0 samples the batch of step 1 with version 0
    book.publish(1)
    # version-1 work would make g0 hand that batch back unfinished to switch weights
    assert book.issue("g0", 100) == []
    assert [i.policy_version for i in book.issue("g1", 100)] == [1] * 4  # an idle generator takes it
    for item in first[4:]:
        assert book.accept(answer(item)) == "accepted"
    batch, _ = book.take_batch()
    assert {g.policy_version for g in batch.groups} == {0}  # the run-ahead was trained, not sampled again
    book.publish(2)
    assert [i.policy_version for i in book.issue("g0", 100)] == [2] * 4  # g0 holds nothing older
    assert book.issue("g1", 100) == []  # g1 still samples version 1, trainable at step 2


def test_stale_groups_are_dropped_and_their_prompts_reissued() -> None:
    book = ledger([stage("m", steps=3, batch=2)], [math_prompts(20)])
    items = book.issue("g0", 2)
    for item in items:
        book.accept(answer(item))
    book.take_batch()
    book.publish(1)
    fresh = book.issue("g0", 2)
    # a group claiming the wrong version is refused and its prompt goes out again
    assert book.accept(answer(fresh[0], version=0)) == "mismatched"
    again = book.issue("g0", 5)
    assert [i.id for i in again] == [fresh[0].id] and again[0].attempt == 1


def test_late_answers_and_resends_count_once() -> None:
    clock = Clock()
    book = ledger([stage("m", steps=1, batch=2)], [math_prompts(10)], clock)
    first = book.issue("g0", 2)
    clock.now = 11  # the leases run out
    cancel = book.expire()
    assert sorted(cancel["g0"]) == sorted(i.id for i in first)
    retry = book.issue("g1", 2)
    assert sorted(i.id for i in retry) == sorted(i.id for i in first)
    assert book.accept(answer(first[0], generator="g0")) == "late"  # the old attempt lost
    assert book.accept(answer(retry[0], generator="g1")) == "accepted"
    assert book.accept(answer(retry[0], generator="g1")) == "late"  # a resend
    assert book.accept(answer(retry[1], generator="g1")) == "accepted"
    batch, _ = book.take_batch()
    assert sorted(g.work_id for g in batch.groups) == sorted(i.id for i in first)


def test_lost_generator_loses_its_leases() -> None:
    book = ledger([stage("m", steps=1, batch=3)], [math_prompts(10)])
    held = book.issue("g0", 2)
    other = book.issue("g1", 1)
    cancel = book.expire(lost_generators={"g0"})
    assert sorted(cancel["g0"]) == sorted(i.id for i in held) and "g1" not in cancel
    assert sorted(i.id for i in book.issue("g1", 5)) == sorted(i.id for i in held)
    assert book.accept(answer(other[0], generator="g1")) == "accepted"


def test_unjudged_groups_are_never_trained() -> None:
    book = ledger([stage("m", steps=1, batch=1)], [math_prompts(5)], max_attempts=2)
    item = book.issue("g0", 1)[0]
    assert book.accept(answer(item, rewards=[0.0, 0.0], status="sandbox_error")) == "unjudged"
    assert book.take_batch() is None
    retry = book.issue("g0", 1)[0]
    assert retry.id == item.id and retry.attempt == 1
    assert book.accept(answer(retry, rewards=[0.0, 0.0], status="timeout")) == "unjudged"
    assert book.counts["skipped"] == 1  # two attempts spent: skipped, not trained as reward 0
    nxt = book.issue("g0", 1)[0]
    assert nxt.id != item.id


def test_dynamic_sampling_drops_zero_variance_groups_and_tops_up() -> None:
    book = ledger([stage("m", steps=1, batch=2)], [math_prompts(10)])
    items = book.issue("g0", 10)
    assert len(items) == 2
    assert book.accept(answer(items[0], rewards=[1.0, 1.0])) == "zero_variance"
    assert book.accept(answer(items[1])) == "accepted"
    more = book.issue("g0", 10)
    assert len(more) == 1  # one more group with signal is needed
    book.accept(answer(more[0], rewards=[0.0, 0.0]))
    assert book.take_batch() is None
    last = book.issue("g0", 10)
    book.accept(answer(last[0]))
    batch, _ = book.take_batch()
    assert all(len({c.reward for c in g.completions}) == 2 for g in batch.groups) and not batch.left_out
    # the groups left out are still counted for the policy's sampled accuracy: 2 of 4 correct
    assert book.counts["zero_variance_completions"] == 4
    assert book.counts["zero_variance_correct"] == 2


def test_overissue_is_cancelled_when_the_step_starts() -> None:
    book = WorkLedger(
        Schedule(stages=[stage("m", steps=2, batch=2)]), [math_prompts(10)], overissue=2.0, clock=Clock()
    )
    items = book.issue("g0", 10)
    assert len(items) == 4
    book.accept(answer(items[0]))
    book.accept(answer(items[1]))
    _batch, cancel = book.take_batch()
    assert sorted(cancel["g0"]) == sorted(i.id for i in items[2:])
    assert book.accept(answer(items[2])) == "late"
    book.publish(1)
    # the cancelled prompts were not consumed: they go out first at the next version
    assert [i.id for i in book.issue("g0", 2)] == [i.id for i in items[2:]]


def test_stage_boundary_discards_the_old_stage() -> None:
    book = ledger(
        [stage("m", steps=1, batch=2), stage("c", kind="code", steps=1, batch=2)],
        [math_prompts(10), code_prompts(10)],
        max_staleness=1,
    )
    math_items = book.issue("g0", 10)
    assert len(math_items) == 2  # only one math step is left: no run-ahead past the stage
    for item in math_items:
        book.accept(answer(item))
    batch, _cancel = book.take_batch()
    assert {g.kind for g in batch.groups} == {"math"} and book.stage.name == "c"
    code_items = book.issue("g0", 10)
    assert {i.kind for i in code_items} == {"code"} and {i.stage for i in code_items} == {1}
    assert code_items[0].tests == [Case(input="", output=code_items[0].id.rsplit("c", 1)[1])]
    book.accept(answer(code_items[0]))
    book.accept(answer(code_items[1]))
    batch, _ = book.take_batch()
    assert {g.stage for g in batch.groups} == {1}
    assert book.done and book.issue("g0", 10) == []


def test_epoch_filter_removes_exactly_the_prompts_every_completion_solved() -> None:
    prompts = code_prompts(6)
    book = ledger(
        [stage("c", kind="code", steps=10, batch=2, filter_solved=True)], [prompts], dynamic_sampling=False
    )
    solved_all = {"c1", "c4"}
    seen_epoch0 = []
    for _ in range(3):
        for item in book.issue("g0", 10):
            prompt_id = split_work_id(item.id)[2]
            seen_epoch0.append(prompt_id)
            book.accept(answer(item, rewards=[1.0, 1.0] if prompt_id in solved_all else [1.0, 0.0]))
        book.take_batch()
        book.publish(book.on_policy.published + 1)
    assert sorted(seen_epoch0) == sorted(p.id for p in prompts)
    epoch1 = book.issue("g0", 10)
    assert book.counts["filtered_out"] == 2 and book.removed == solved_all
    assert {split_work_id(i.id)[1] for i in epoch1} == {1}
    assert not solved_all & {split_work_id(i.id)[2] for i in epoch1}


def test_epoch_filter_waits_for_the_epoch_results() -> None:
    book = ledger(
        [stage("c", kind="code", steps=10, batch=3, filter_solved=True)],
        [code_prompts(4)],
        dynamic_sampling=False,
    )
    first = book.issue("g0", 3)
    for item in first:
        book.accept(answer(item, rewards=[1.0, 1.0]))
    book.take_batch()
    book.publish(1)
    last = book.issue("g0", 3)
    assert len(last) == 1  # the fourth prompt; the next epoch waits until it is resolved
    book.accept(answer(last[0]))
    nxt = book.issue("g0", 3)
    assert len(nxt) == 1 and book.removed == {split_work_id(i.id)[2] for i in first}


@pytest.mark.parametrize("staleness", [0, 1])
def test_resume_continues_with_the_same_prompts(staleness: int) -> None:
    def run(book: WorkLedger, steps: int) -> list[str]:
        trained = []
        for _ in range(steps):
            for item in book.issue("g0", 100):
                book.accept(answer(item))
            batch, _ = book.take_batch()
            trained += [g.work_id for g in batch.groups]
            book.publish(book.on_policy.published + 1)
        return trained

    def fresh() -> WorkLedger:
        return ledger([stage("m", steps=8, batch=3)], [math_prompts(7)], max_staleness=staleness)

    straight = fresh()
    run(straight, 3)
    state = straight.state()
    tail = run(straight, 5)
    resumed = fresh()
    resumed.on_policy.restore(3)  # as the learner's checkpoint of step 3 restores the shared clock
    resumed.restore(state)
    assert run(resumed, 5) == tail


def test_dynamic_sampling_gives_up_on_a_batch_without_signal() -> None:
    book = ledger([stage("m", steps=1, batch=2)], [math_prompts(20)], max_zero_variance_batches=2)
    outcomes = []
    while book.take_batch() is None:
        for item in book.issue("g0", 1):
            outcomes.append(book.accept(answer(item, rewards=[0.0, 0.0])))
    assert outcomes == ["zero_variance"] * 4 + ["accepted"] * 2
    assert book.counts["zero_variance_kept"] == 2


def test_groups_kept_to_fill_a_batch_are_left_out_of_training() -> None:
    book = ledger([stage("m", steps=1, batch=2)], [math_prompts(20)], max_zero_variance_batches=1)
    while (taken := book.take_batch()) is None:
        for item in book.issue("g0", 1):
            book.accept(answer(item, rewards=[1.0, 1.0]))
    batch, _ = taken
    # screened once, here: the trainer gets them as left out (counted in its figures), never to train
    assert batch.trained == [] and len(batch.left_out) == 2 and batch.unjudged == 0
    assert book.counts["zero_variance"] == 2 and book.counts["zero_variance_kept"] == 2


def test_a_group_sampled_at_another_temperature_is_refused() -> None:
    book = ledger([stage("m", steps=1, batch=1)], [math_prompts(5)])
    item = book.issue("g0", 1)[0]
    group = answer(item).model_copy(update={"temperature": item.sampling.temperature + 0.5})
    assert book.accept(group) == "mismatched"
    assert [i.id for i in book.issue("g0", 1)] == [item.id]


def test_a_temperature_ramp_never_mixes_temperatures_in_a_batch() -> None:
    ramped = stage("m", steps=5, batch=2, temperature=0.6, temperature_final=1.0, ramp_epochs=2)
    book = ledger([ramped], [math_prompts(5)], dynamic_sampling=False)
    batches = []
    for _ in range(5):
        for item in book.issue("g0", 100):
            book.accept(answer(item))
        batch, _ = book.take_batch()
        batches.append([g.temperature for g in batch.groups])
        book.publish(book.on_policy.published + 1)
    # the epoch's fifth prompt trains alone: the next epoch waits for it, at its new temperature
    assert batches == [[0.6, 0.6], [0.6, 0.6], [0.6], [1.0, 1.0], [1.0, 1.0]]
