"""The work loop against real sockets, with the engine replaced by a scripted one (unit tests).

The dispatcher and the judge are scripted servers speaking proto/; the engine is a stand-in that
"samples" fixed tokens after a few steps, so that the loop's own rules can be checked quickly:
judge retries, WorkCancel, resend until acknowledged, refusals, version labels, shutdown.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from generator.config import GeneratorConfig
from generator.engine import Finished, Sample
from generator.worker import Worker
from proto.judge import JudgeRequest, Verdict
from proto.weights import WeightAnnounce
from proto.work import WorkCancel
from tests.generator.scripted import ScriptedDispatcher, ScriptedJudge, ScriptedPublisher, correct, math_item


class StubEngine:
    """Finishes each request `steps` engine steps after it was submitted, with fixed tokens."""

    def __init__(self, steps: int = 3, version: int = 0) -> None:
        self.steps = steps
        self.version = version
        self.label: str | None = None  # overrides the weight-version label of the samples
        self.pending: dict[str, tuple[np.ndarray, int, int]] = {}  # id -> (prompt, n, steps left)
        self.aborted: list[str] = []
        self.count = 0
        self.loading: int | None = None  # never loads weights in steps
        self.whole = True
        self.partial_loads = False

    def render_prompt(self, prompt: str | None, ids: np.ndarray | None, template: bool) -> np.ndarray:
        return np.array([1, 2, 3], dtype=np.int32)

    def opens_think(self, prompt: np.ndarray) -> bool:
        return False

    def sampling_params(self, sampling, prompt_len):  # type: ignore[no-untyped-def]
        return sampling

    def submit(self, prompt: np.ndarray, params) -> str:  # type: ignore[no-untyped-def]
        self.count += 1
        request_id = f"r{self.count}"
        self.pending[request_id] = (prompt, params.n, self.steps)
        return request_id

    def abort(self, request_ids: list[str]) -> None:
        for request_id in request_ids:
            if self.pending.pop(request_id, None) is not None:
                self.aborted.append(request_id)

    @property
    def busy(self) -> bool:
        return bool(self.pending)

    def step(self) -> list[Finished]:
        time.sleep(0.005)
        done = []
        for request_id, (prompt, n, left) in list(self.pending.items()):
            if left > 1:
                self.pending[request_id] = (prompt, n, left - 1)
                continue
            del self.pending[request_id]
            label = self.label or str(self.version)
            samples = [
                Sample(
                    token_ids=np.array([7, 8], dtype=np.int32),
                    logprobs=np.array([-0.5, -0.25], dtype=np.float32),
                    finish_reason="length",
                    text="<think>ok</think> \\boxed{5}",
                    versions=frozenset({label}),
                )
                for _ in range(n)
            ]
            done.append(Finished(request_id, prompt, samples))
        return done

    def close(self) -> None:
        pass


@pytest.fixture
def dispatcher() -> Iterator[ScriptedDispatcher]:
    live = ScriptedDispatcher()
    yield live
    live.close()


def make_worker(
    tmp_path: Path, dispatcher: ScriptedDispatcher, judge: ScriptedJudge, engine: StubEngine, **fields: object
) -> Worker:
    (tmp_path / "config.json").write_text("{}")
    config = GeneratorConfig(
        learner=dispatcher.address,
        judge=judge.address,
        model=tmp_path,
        generator_id="g",
        credits=fields.pop("credits", 4),  # type: ignore[arg-type]
        heartbeat_s=0.2,
        resend_s=0.3,
        learner_timeout_s=2,
        **fields,  # type: ignore[arg-type]
    )
    return Worker(config, engine)  # type: ignore[arg-type]


def drive(worker: Worker, until: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not until():
        assert time.monotonic() < deadline, "condition not reached"
        worker.turn()


def test_unjudged_verdicts_are_retried_then_returned_unjudged(
    tmp_path: Path, dispatcher: ScriptedDispatcher
) -> None:
    def verdict(request: JudgeRequest, times: int) -> Verdict:
        if request.id.endswith("/0"):
            return Verdict(id=request.id, reward=0, status="sandbox_error", detail="nsjail failed")
        if times == 1:
            return Verdict(id=request.id, reward=0, status="timeout", detail="math-verify timed out")
        return Verdict(id=request.id, reward=1, status="correct")

    judge = ScriptedJudge(verdict)
    worker = make_worker(tmp_path, dispatcher, judge, StubEngine(), judge_retries=2)
    try:
        dispatcher.add([math_item("w1", n=2)])
        drive(worker, lambda: "w1" in dispatcher.log.accepted)
        first, second = dispatcher.log.accepted["w1"].completions
        assert (first.judge_status, first.reward, first.judge_detail) == (
            "sandbox_error",
            0.0,
            "nsjail failed",
        )
        assert (second.judge_status, second.reward) == ("correct", 1.0)
        assert judge.seen == {"w1/0": 3, "w1/1": 2}  # 1 + judge_retries tries, then passed on as it is
    finally:
        worker.close()
        judge.close()


def test_work_cancel_aborts_the_request_and_frees_the_credit(
    tmp_path: Path, dispatcher: ScriptedDispatcher
) -> None:
    judge = ScriptedJudge(correct)
    engine = StubEngine(steps=10_000)
    worker = make_worker(tmp_path, dispatcher, judge, engine, credits=1)
    try:
        dispatcher.add([math_item("w1")])
        drive(worker, lambda: bool(engine.pending))
        dispatcher.push(WorkCancel(work_ids=["w1"], reason="batch full"))
        drive(worker, lambda: not engine.pending)
        assert engine.aborted == ["r1"]
        engine.steps = 2
        dispatcher.add([math_item("w2")])  # needs the credit the cancel gave back
        drive(worker, lambda: "w2" in dispatcher.log.accepted)
        assert "w1" not in dispatcher.log.accepted and worker.pipeline.counts["cancelled"] == 1
    finally:
        worker.close()
        judge.close()


def test_a_rollout_is_resent_until_acknowledged(tmp_path: Path, dispatcher: ScriptedDispatcher) -> None:
    judge = ScriptedJudge(correct)
    worker = make_worker(tmp_path, dispatcher, judge, StubEngine())
    try:
        dispatcher.swallow = 2
        dispatcher.add([math_item("w1")])
        drive(worker, lambda: "w1" in dispatcher.log.accepted and not worker.pipeline.held)
        assert len(dispatcher.log.swallowed) == 2
        assert dispatcher.log.twice == []
    finally:
        worker.close()
        judge.close()


def test_a_long_engine_step_is_not_taken_for_a_lost_learner(
    tmp_path: Path, dispatcher: ScriptedDispatcher
) -> None:
    """Nothing is sent during a step longer than learner_timeout_s (2 s here), so nothing can be
    answered: the generator must not reconnect afterwards, and keeps its work."""
    judge = ScriptedJudge(correct)
    engine = StubEngine()
    stalls = [2.5]
    plain_step = engine.step

    def stalling_step() -> list[Finished]:
        if stalls:
            time.sleep(stalls.pop())
        return plain_step()

    engine.step = stalling_step  # type: ignore[method-assign]
    worker = make_worker(tmp_path, dispatcher, judge, engine)
    try:
        dispatcher.add([math_item("w1")])
        drive(worker, lambda: "w1" in dispatcher.log.accepted and not worker.pipeline.held)
        beats = len(dispatcher.log.heartbeats)
        drive(worker, lambda: len(dispatcher.log.heartbeats) >= beats + 3)  # connected afterwards
        assert not stalls and len(dispatcher.log.hellos) == 1
        assert dispatcher.log.aborted == []
    finally:
        worker.close()
        judge.close()


def test_stale_and_surplus_items_are_handed_back(tmp_path: Path, dispatcher: ScriptedDispatcher) -> None:
    judge = ScriptedJudge(correct)
    engine = StubEngine(version=3)
    worker = make_worker(tmp_path, dispatcher, judge, engine, credits=2)
    try:
        drive(worker, lambda: dispatcher.credits.get("g") == 2)
        with dispatcher._lock:
            dispatcher.credits["g"] = 5  # a dispatcher that ignores the credit
            dispatcher.add([math_item("old", version=2)] + [math_item(f"w{i}", version=3) for i in range(4)])
        drive(worker, lambda: len(dispatcher.log.aborted) >= 2)
        reasons = {a.reason.split(":")[0]: a.work_ids for a in dispatcher.log.aborted}
        assert reasons["stale version"] == ["old"]
        assert reasons["over credit"] == ["w2", "w3"]
    finally:
        worker.close()
        judge.close()


def test_work_for_a_version_already_superseded_is_handed_back_at_once(
    tmp_path: Path, dispatcher: ScriptedDispatcher
) -> None:
    """Work issued just before the next version was announced needs weights that the publisher
    no longer serves: it goes back to be issued again, instead of waiting out its lease."""
    judge = ScriptedJudge(correct)
    publisher = ScriptedPublisher()  # serves no version: v1 is gone, v2 not yet there
    worker = make_worker(tmp_path, dispatcher, judge, StubEngine(version=0))
    try:
        drive(worker, lambda: dispatcher.credits.get("g") == 4)
        dispatcher.push(WeightAnnounce(version=2, num_tensors=1, total_bytes=8, address=publisher.address))
        drive(worker, lambda: worker.pipeline.announce is not None)
        dispatcher.add([math_item("w1", version=1), math_item("w2", version=1)])
        drive(worker, lambda: sum(len(a.work_ids) for a in dispatcher.log.aborted) >= 2, timeout_s=5)
        # (this dispatcher issues them again as they were, so they may come back more than once)
        assert {(tuple(a.work_ids), a.reason.split(": ")[1]) for a in dispatcher.log.aborted} == {
            (("w1", "w2"), "superseded")
        }
        assert dispatcher.log.groups == []
    finally:
        worker.close()
        judge.close()
        publisher.close()


def test_samples_labelled_with_another_version_are_never_returned(
    tmp_path: Path, dispatcher: ScriptedDispatcher
) -> None:
    judge = ScriptedJudge(correct)
    engine = StubEngine()
    engine.label = "1"  # as if the weights had changed under the request
    worker = make_worker(tmp_path, dispatcher, judge, engine)
    try:
        dispatcher.add([math_item("w1")])
        drive(worker, lambda: bool(dispatcher.log.aborted))
        assert dispatcher.log.aborted[0].reason.startswith("weights changed while sampling")
        assert dispatcher.log.groups == []
    finally:
        worker.close()
        judge.close()


def test_shutdown_without_a_learner_stops_promptly(tmp_path: Path, dispatcher: ScriptedDispatcher) -> None:
    judge = ScriptedJudge(correct)
    engine = StubEngine(steps=10_000)
    worker = make_worker(tmp_path, dispatcher, judge, engine, shutdown_grace_s=60)
    try:
        dispatcher.add([math_item("w1")])
        drive(worker, lambda: bool(engine.pending))
        dispatcher.close()
        worker.begin_stop("test", 60)
        started = time.monotonic()
        drive(worker, worker._finished_stopping, timeout_s=10)
        assert time.monotonic() - started < 2 * 0.3 * 2 + 2  # far below the 60 s grace
        assert engine.aborted == ["r1"]
    finally:
        worker.close()
        judge.close()
