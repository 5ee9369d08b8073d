"""The dispatcher over real sockets, with generators scripted from proto.Client."""

from __future__ import annotations

import threading
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from learner.orchestration.dispatcher import Dispatcher, fair_shares
from learner.orchestration.schedule import Schedule
from learner.orchestration.step_timeline import by_generator
from learner.orchestration.work_ledger import WorkLedger
from proto import (
    Ack,
    Client,
    Credit,
    Error,
    Heartbeat,
    Hello,
    JudgeRequest,
    RemoteError,
    Shutdown,
    SocketLimits,
    Status,
    StatusRequest,
    WeightAnnounce,
    WorkBatch,
    WorkCancel,
    WorkItem,
)
from tests.orchestration.test_work_ledger import answer, math_prompts, stage

LIMITS = SocketLimits(recv_timeout_ms=3_000, send_timeout_ms=3_000)


class ScriptedGenerator:
    """A generator without an engine: answers each item at once with a fixed reward pattern."""

    def __init__(self, address: str, name: str) -> None:
        self.name = name
        self.client = Client(address, limits=LIMITS, identity=name)
        self.client.request(Hello(sender=name, role="generator"))
        self.items: list[WorkItem] = []
        self.pushed: list = []

    def credit(self, credits: int) -> None:
        self.client.request(Credit(generator_id=self.name, credits=credits))

    def collect(self, count: int | None, timeout_s: float = 5.0) -> list[WorkItem]:
        """Work items pushed until `count` arrived (None: until `timeout_s` passes)."""
        deadline = time.monotonic() + timeout_s
        got: list[WorkItem] = []
        while (count is None or len(got) < count) and time.monotonic() < deadline:
            reply = self.client.recv(timeout_ms=100)
            if reply is None:
                continue
            if isinstance(reply.message, WorkBatch):
                got += reply.message.items
            else:
                self.pushed.append(reply.message)
        return got

    def answer(self, item: WorkItem) -> str:
        reply = self.client.request(answer(item, generator=self.name))
        assert isinstance(reply, Ack)
        return reply.detail

    def close(self) -> None:
        self.client.close()


@pytest.fixture
def dispatcher() -> Dispatcher:
    book = WorkLedger(Schedule(stages=[stage("m", steps=3, batch=4)], lease_s=60), [math_prompts(30)])
    running = Dispatcher(book, heartbeat_timeout_s=1.0, limits=LIMITS).start()
    yield running
    running.stop()


def test_a_step_round_trip(dispatcher: Dispatcher) -> None:
    gen = ScriptedGenerator(dispatcher.address, "g0")
    gen.credit(10)
    items = gen.collect(4)
    assert len(items) == 4 and gen.collect(None, timeout_s=0.3) == []  # strict: one batch only
    assert [gen.answer(i) for i in items] == ["accepted"] * 4
    assert gen.answer(items[0]) == "late"  # a resend is acknowledged but not counted
    batch = dispatcher.take_batch(timeout_s=5)
    assert sorted(g.work_id for g in batch.groups) == sorted(i.id for i in items)
    announcement = WeightAnnounce(version=1, num_tensors=3, total_bytes=100, address="tcp://127.0.0.1:1")
    dispatcher.publish(announcement)
    nxt = gen.collect(4)
    assert announcement in gen.pushed  # the announcement arrives before the work that needs it
    assert {i.policy_version for i in nxt} == {1}
    gen.close()


def test_a_silent_generator_loses_its_work_to_another(dispatcher: Dispatcher) -> None:
    quiet = ScriptedGenerator(dispatcher.address, "quiet")
    quiet.credit(4)
    held = quiet.collect(4)
    busy = ScriptedGenerator(dispatcher.address, "busy")
    busy.credit(4)
    stop = threading.Event()

    def beat() -> None:  # only "busy" keeps its heartbeat
        while not stop.is_set():
            busy_beat.request(Heartbeat(sender="busy", role="generator", time=time.time()))
            time.sleep(0.2)

    busy_beat = Client(dispatcher.address, limits=LIMITS)
    beater = threading.Thread(target=beat)
    beater.start()
    try:
        reissued = busy.collect(4, timeout_s=5)
        assert sorted(i.id for i in reissued) == sorted(i.id for i in held)
        assert {i.attempt for i in reissued} == {1}
        for item in reissued:
            assert busy.answer(item) == "accepted"
        assert quiet.answer(held[0]) == "late"  # it comes back too late: dropped
        batch = dispatcher.take_batch(timeout_s=5)
        assert sorted(g.work_id for g in batch.groups) == sorted(i.id for i in held)
        assert {g.generator_id for g in batch.groups} == {"busy"}
    finally:
        stop.set()
        beater.join()
        busy_beat.close()
        quiet.close()
        busy.close()


def test_over_issued_work_is_cancelled(dispatcher: Dispatcher) -> None:
    dispatcher.ledger.overissue = 1.5
    gen = ScriptedGenerator(dispatcher.address, "g0")
    gen.credit(10)
    items = gen.collect(6)
    assert len(items) == 6
    for item in items[:4]:
        gen.answer(item)
    dispatcher.take_batch(timeout_s=5)
    gen.collect(None, timeout_s=0.5)
    cancels = [m for m in gen.pushed if isinstance(m, WorkCancel)]
    assert sorted(w for c in cancels for w in c.work_ids) == sorted(i.id for i in items[4:])
    gen.close()


def test_bad_requests_are_refused_and_the_dispatcher_goes_on(dispatcher: Dispatcher) -> None:
    with Client(dispatcher.address, limits=LIMITS) as client:
        with pytest.raises(RemoteError, match="does not take judge_request"):
            client.request(JudgeRequest(id="x", kind="math", response="r", answer="1"))
        assert isinstance(client.request(Heartbeat(sender="h", role="generator", time=0.0)), Ack)


def test_status_lists_the_connected_generators_and_where_the_run_stands(dispatcher: Dispatcher) -> None:
    with Client(dispatcher.address, limits=LIMITS) as supervisor:
        assert supervisor.request(StatusRequest()) == Status(
            generators=[], step=0, version=None, stage=0, done=False
        )
        # a supervisor's probes are answered, and it is not taken for a generator
        assert isinstance(supervisor.request(Hello(sender="supervisor", role="client")), Ack)
        assert isinstance(supervisor.request(Heartbeat(sender="supervisor", role="client", time=0.0)), Ack)
        assert supervisor.request(StatusRequest()).generators == []
        gen = ScriptedGenerator(dispatcher.address, "g0")
        gen.credit(4)
        for item in gen.collect(4):
            gen.answer(item)
        dispatcher.take_batch(timeout_s=5)
        dispatcher.publish(
            WeightAnnounce(version=1, num_tensors=1, total_bytes=1, address="tcp://127.0.0.1:1")
        )
        assert supervisor.request(StatusRequest()) == Status(
            generators=["g0"], step=1, version=1, stage=0, done=False
        )
        gen.close()  # silent past the heartbeat timeout (1 s): no longer listed
        deadline = time.monotonic() + 5
        while supervisor.request(StatusRequest()).generators and time.monotonic() < deadline:
            time.sleep(0.1)
        assert supervisor.request(StatusRequest()).generators == []


def test_take_batch_times_out_with_a_reason(dispatcher: Dispatcher) -> None:
    with pytest.raises(TimeoutError, match="0 groups ready"):
        dispatcher.take_batch(timeout_s=0.3)


def test_stop_tells_generators_to_shut_down() -> None:
    book = WorkLedger(Schedule(stages=[stage("m", steps=1, batch=2)]), [math_prompts(5)])
    running = Dispatcher(book, limits=LIMITS).start()
    gen = ScriptedGenerator(running.address, "g0")
    running.stop(reason="done")
    gen.collect(None, timeout_s=0.5)
    assert any(isinstance(m, Shutdown) and m.reason == "done" for m in gen.pushed)
    assert not any(isinstance(m, Error) for m in gen.pushed)
    gen.close()


def test_a_result_sent_as_the_dispatcher_stops_is_answered_with_the_shutdown() -> None:
    book = WorkLedger(Schedule(stages=[stage("m", steps=1, batch=2)]), [math_prompts(5)])
    running = Dispatcher(book, limits=LIMITS, drain_s=5.0).start()
    gen = ScriptedGenerator(running.address, "g0")
    gen.credit(2)
    items = gen.collect(2)
    stopping = threading.Thread(target=running.stop, kwargs={"reason": "learner stopped"})
    stopping.start()
    deadline = time.monotonic() + 5
    while not any(isinstance(m, Shutdown) for m in gen.pushed) and time.monotonic() < deadline:
        gen.collect(None, timeout_s=0.1)
    # after the pushed notice, a result is not taken: the answer is the Shutdown itself
    reply = gen.client.request(answer(items[0], generator="g0"))
    assert isinstance(reply, Shutdown) and reply.reason == "learner stopped"
    assert running.counts().get("accepted", 0) == 0
    stopping.join(timeout=10)
    assert not stopping.is_alive()
    gen.close()


def test_a_restarted_generator_gets_its_old_work_again_at_once(dispatcher: Dispatcher) -> None:
    first = ScriptedGenerator(dispatcher.address, "g0")
    first.credit(4)
    held = first.collect(4)
    first.close()  # the process dies; a new one starts under the same id
    second = ScriptedGenerator(dispatcher.address, "g0")
    second.credit(4)
    again = second.collect(4, timeout_s=5)
    assert sorted(i.id for i in again) == sorted(i.id for i in held) and {i.attempt for i in again} == {1}
    for item in again:
        assert second.answer(item) == "accepted"
    assert len(dispatcher.take_batch(timeout_s=5).groups) == 4
    second.close()


def test_work_a_heartbeat_does_not_list_is_issued_again_once_past_the_grace() -> None:
    book = WorkLedger(Schedule(stages=[stage("m", steps=3, batch=4)], lease_s=600), [math_prompts(30)])
    running = Dispatcher(book, reconcile_grace_s=0.5, limits=LIMITS).start()
    gen = ScriptedGenerator(running.address, "g0")
    try:
        gen.credit(4)
        items = gen.collect(4)
        got, lost = items[:2], items[2:]  # as if the push of the last two had not arrived

        def beat(work_ids: list[str]) -> None:
            reply = gen.client.request(
                Heartbeat(sender="g0", role="generator", time=time.time(), work_ids=work_ids)
            )
            assert isinstance(reply, Ack)

        beat([i.id for i in got])  # within the grace: the pushes may still be on their way
        assert gen.collect(None, timeout_s=0.2) == [] and not gen.pushed
        time.sleep(0.5)
        beat([i.id for i in items])  # everything listed: nothing to do
        beat([i.id for i in got])  # past the grace, two missing: withdrawn and issued again
        gen.collect(None, timeout_s=0.3)
        cancels = [m for m in gen.pushed if isinstance(m, WorkCancel)]
        assert sorted(w for c in cancels for w in c.work_ids) == sorted(i.id for i in lost)
        assert running.counts()["unknown_to_generator"] == 2
        gen.credit(2)
        again = gen.collect(2)
        assert sorted(i.id for i in again) == sorted(i.id for i in lost) and {i.attempt for i in again} == {1}
        for item in got + again:
            assert gen.answer(item) == "accepted"
        assert len(running.take_batch(timeout_s=5).groups) == 4
        beat([])  # a heartbeat without work ids (older senders) changes nothing either
    finally:
        gen.close()
        running.stop()


def test_a_reconnecting_generator_keeps_its_work_and_a_new_process_does_not(dispatcher: Dispatcher) -> None:
    gen = ScriptedGenerator(dispatcher.address, "g0")
    try:
        hello = Hello(sender="g0", role="generator", host="h", pid=41)
        gen.client.request(hello)
        gen.credit(4)
        held = gen.collect(4)
        gen.client.request(hello)  # the same process again, after a silence: it still holds them
        for item in held[:2]:
            assert gen.answer(item) == "accepted"
        gen.client.request(Hello(sender="g0", role="generator", host="h", pid=42))  # a new process
        gen.collect(None, timeout_s=0.3)
        cancels = [m for m in gen.pushed if isinstance(m, WorkCancel)]
        assert sorted(w for c in cancels for w in c.work_ids) == sorted(i.id for i in held[2:])
        assert gen.answer(held[2]) == "late"
    finally:
        gen.close()


def test_a_push_that_fails_is_sent_again_once_the_generator_is_back(dispatcher: Dispatcher) -> None:
    gone = ScriptedGenerator(dispatcher.address, "g0")
    gone.close()  # its connection drops; the dispatcher still counts it as a generator
    time.sleep(0.3)
    announcement = WeightAnnounce(version=1, num_tensors=3, total_bytes=100, address="tcp://127.0.0.1:1")
    dispatcher.publish(announcement)  # pushed to nobody: kept
    time.sleep(0.3)
    back = Client(dispatcher.address, limits=LIMITS, identity="g0")  # the same generator, reconnected
    try:
        assert isinstance(back.request(Heartbeat(sender="g0", role="generator", time=0.0)), Ack)
        deadline = time.monotonic() + 5
        pushed = []
        while not pushed and time.monotonic() < deadline:
            reply = back.recv(timeout_ms=100)
            if reply is not None:
                pushed.append(reply.message)
        assert pushed == [announcement]
    finally:
        back.close()


@given(st.dictionaries(st.sampled_from("abcdef"), st.integers(1, 300), min_size=1), st.integers(0, 2000))
def test_fair_shares_follow_the_free_credits(free: dict[str, int], wanted: int) -> None:
    shares = fair_shares(free, wanted)
    assert sum(shares.values()) == min(wanted, sum(free.values()))
    for g, n in shares.items():
        assert 0 < n <= free[g]
        assert abs(n - min(wanted, sum(free.values())) * free[g] / sum(free.values())) < 1


def test_three_generators_of_unequal_credits_share_a_step_by_their_room() -> None:
    """Before, the first generator with credits took min(credits, wanted): one of them did the
    whole step while the others waited."""
    book = WorkLedger(Schedule(stages=[stage("m", steps=3, batch=12)], lease_s=60), [math_prompts(60)])
    dispatcher = Dispatcher(book, heartbeat_timeout_s=5.0, limits=LIMITS).start()
    credits = {"g0": 4, "g1": 8, "g2": 12}
    gens = {name: ScriptedGenerator(dispatcher.address, name) for name in credits}
    try:
        for name, gen in gens.items():  # the first step goes to whoever asks first
            gen.credit(credits[name])
        first = {name: gen.collect(None, timeout_s=0.5) for name, gen in gens.items()}
        assert sum(len(items) for items in first.values()) == 12
        for name, items in first.items():
            assert [gens[name].answer(i) for i in items] == ["accepted"] * len(items)
            if items:
                gens[name].credit(len(items))  # done with them: the room is back
        assert len(dispatcher.take_batch(timeout_s=5).groups) == 12
        # every generator's room is known when v1's work comes: 12 items over 4 : 8 : 12
        dispatcher.publish(
            WeightAnnounce(version=1, num_tensors=1, total_bytes=1, address="tcp://127.0.0.1:1")
        )
        second = {name: gen.collect(None, timeout_s=0.5) for name, gen in gens.items()}
        assert {name: len(items) for name, items in second.items()} == {"g0": 2, "g1": 4, "g2": 6}
        for name, items in second.items():
            for item in items:
                gens[name].answer(item)
        batch = dispatcher.take_batch(timeout_s=5)
        assert by_generator(batch.groups)["generator_groups"] == {"g0": 2, "g1": 4, "g2": 6}
    finally:
        for gen in gens.values():
            gen.close()
        dispatcher.stop()
