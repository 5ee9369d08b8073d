"""Held-out evaluation rounds: prompts go out as training sends them (the stage's template and stop
strings), and the round keeps its leases in the same lease book as training work."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

from learner.config import EvalSet, RunConfig
from learner.on_policy import OnPolicyClock
from learner.orchestration.evaluation import EvalRound
from learner.orchestration.run import _evaluate, ends_its_task
from proto.work import SamplingParams, WorkItem
from tests.orchestration.test_work_ledger import Clock, answer, code_prompts, math_prompts


def round_of(prompts: int, clock: Clock, on_policy: OnPolicyClock, **extra) -> EvalRound:
    sampling = SamplingParams(n=2, max_tokens=8, stop=["</answer>"])
    return EvalRound(
        "0/math/avg2",
        "math",
        math_prompts(prompts),
        sampling,
        on_policy=on_policy,
        stage=0,
        lease_s=10,
        clock=clock,
        **extra,
    )


def test_items_carry_the_template_the_stop_strings_and_the_published_version() -> None:
    on_policy = OnPolicyClock()
    on_policy.publish(4)
    evaluation = round_of(2, Clock(), on_policy, template="Q: {prompt}\nA:")
    items = evaluation.issue("g0", 10)
    assert [i.prompt for i in items] == ["Q: 0 + 1 = ?\nA:", "Q: 1 + 1 = ?\nA:"]
    assert {i.policy_version for i in items} == {4} and {tuple(i.sampling.stop) for i in items} == {
        ("</answer>",)
    }
    assert all(i.id.startswith("eval/0/math/avg2/") for i in items)


def test_answers_count_once_and_only_from_the_weights_evaluated() -> None:
    clock, on_policy = Clock(), OnPolicyClock()
    evaluation = round_of(3, clock, on_policy, max_attempts=2)
    first, second, third = evaluation.issue("g0", 10)
    assert evaluation.accept(answer(first, rewards=[1.0, 0.0])) == "scored"
    assert evaluation.accept(answer(first)) == "late"  # a resend
    assert evaluation.accept(answer(second, version=1)) == "retry"  # not the weights evaluated
    assert evaluation.accept(answer(third, status="timeout")) == "retry"  # a verdict is missing
    again = evaluation.issue("g1", 10)
    assert sorted(i.id for i in again) == sorted([second.id, third.id]) and {i.attempt for i in again} == {1}
    clock.now = 11
    assert sorted(evaluation.expire()["g1"]) == sorted(i.id for i in again)
    assert evaluation.done and evaluation.skipped == 2  # two attempts each: left out, never scored as wrong
    assert evaluation.accuracy() == 0.5


def test_a_generator_handing_work_back_gets_it_issued_again() -> None:
    evaluation = round_of(2, Clock(), OnPolicyClock())
    items = evaluation.issue("g0", 10)
    assert evaluation.release([items[0].id], "g1") == 0  # not its lease
    assert evaluation.release([items[0].id], "g0") == 1
    assert [i.id for i in evaluation.issue("g1", 10)] == [items[0].id]


def test_the_run_evaluates_each_task_in_the_template_of_its_stage(tmp_path: Path) -> None:
    stage = {"max_response_tokens": 8, "batch_prompts": 2, "n": 2, "learning_rate": 1e-6, "steps": 1}
    cfg = RunConfig.model_validate(
        {
            "run_dir": tmp_path,
            "eval": {"k": 2, "greedy": False, "sets": []},
            "schedule": {
                "stages": [
                    {"name": "m", "kind": "math", "prompts": "m.jsonl", **stage},
                    {"name": "m2", "kind": "math", "prompts": "m.jsonl", "prompt_template": "M2 {prompt}",
                     **stage},
                    {"name": "c", "kind": "code", "prompts": "c.jsonl", "prompt_template": "Code: {prompt}",
                     "stop": ["```\n"], **stage},
                ]
            },
        }
    )  # fmt: skip
    eval_sets = [
        (EvalSet(task="math", prompts=Path("m.jsonl")), math_prompts(1)),
        (EvalSet(task="code", prompts=Path("c.jsonl")), code_prompts(1)),
    ]
    issued: list[WorkItem] = []

    class Dispatcher:
        def evaluate(self, evaluation: EvalRound, timeout_s: float, progress: object = None) -> EvalRound:
            for item in evaluation.issue("g0", 10):
                issued.append(item)
                evaluation.accept(answer(item))
            return evaluation

    learner = SimpleNamespace(step=0, on_policy=OnPolicyClock())
    metrics = SimpleNamespace(records=[])
    metrics.write = metrics.records.append
    _evaluate(cfg, eval_sets, learner, Dispatcher(), metrics, stage=0)  # type: ignore[arg-type]
    _evaluate(cfg, eval_sets, learner, Dispatcher(), metrics, stage=1)  # type: ignore[arg-type]
    # before RL: math as stage 0 sends it, code as the first code stage will
    assert [(i.prompt, i.sampling.stop) for i in issued] == [
        ("0 + 1 = ?", []),
        ("Code: print 0", ["```\n"]),
        ("M2 0 + 1 = ?", []),  # after the second math stage: its template
        ("Code: print 0", ["```\n"]),
    ]
    assert [r.accuracy for r in metrics.records] == [0.5] * 4
    # each round's per-prompt results, beside its record
    written = sorted(p.parent.name for p in (tmp_path / "eval").glob("*/per_prompt.jsonl"))
    assert written == ["step000000-c-avg2", "step000000-m-avg2"]  # step 0 twice: overwritten
    row = json.loads((tmp_path / "eval/step000000-m-avg2/per_prompt.jsonl").read_text())
    assert row["id"] == "m0" and row["k"] == 2 and row["correct"] == 1 and row["pass1"] == 0.5


def test_between_stages_of_one_task_only_what_between_stages_asks_is_scored(tmp_path: Path) -> None:
    stage = {"max_response_tokens": 8, "batch_prompts": 2, "n": 2, "learning_rate": 1e-6, "steps": 1}
    stages = [
        {"name": "m", "kind": "math", "prompts": "m.jsonl", **stage},
        {"name": "m2", "kind": "math", "prompts": "m.jsonl", **stage},
        {"name": "c", "kind": "code", "prompts": "c.jsonl", **stage},
    ]
    schedule = RunConfig.model_validate({"schedule": {"stages": stages}}).schedule
    assert [ends_its_task(schedule.stages, i) for i in range(3)] == [False, True, True]

    class Dispatcher:
        def evaluate(self, evaluation: EvalRound, timeout_s: float, progress: object = None) -> EvalRound:
            for item in evaluation.issue("g0", 10):
                evaluation.accept(answer(item))
            return evaluation

    modes = {}
    for between in ("full", "greedy", "none"):
        cfg = RunConfig.model_validate(
            {"run_dir": tmp_path, "eval": {"k": 2, "between_stages": between}, "schedule": {"stages": stages}}
        )
        learner = SimpleNamespace(step=0, on_policy=OnPolicyClock())
        metrics = SimpleNamespace(records=[])
        metrics.write = metrics.records.append
        sets = [(EvalSet(task="math", prompts=Path("m.jsonl")), math_prompts(1))]
        for full in (True, False):
            _evaluate(cfg, sets, learner, Dispatcher(), metrics, stage=0, full=full)  # type: ignore[arg-type]
        modes[between] = [r.mode for r in metrics.records]
    # the first two records are the full round's, whatever between_stages says
    assert modes == {
        "full": ["avg2", "greedy", "avg2", "greedy"],
        "greedy": ["avg2", "greedy", "greedy"],
        "none": ["avg2", "greedy"],
    }
