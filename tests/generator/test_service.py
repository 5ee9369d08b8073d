"""Two `python -m generator` processes serve one scripted dispatcher over tcp, judged by the real daemon.

The tests run in order on one shared set-up (two engines start once, concurrently): judged groups
come back; a weight update aborts stale work and tags later groups; SIGKILL of one generator
mid-batch loses nothing; the dispatcher restarts and the survivor reconnects; SIGTERM hands back.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from proto.judge import MATH_STATUSES, REWARDED_STATUSES, JudgeRequest
from proto.judge import TestCase as Case
from proto.judge_client import JudgeClient
from proto.weights import WeightAnnounce
from proto.work import SamplingParams, WorkItem
from tests.generator.scripted import (
    LiveProcess,
    ScriptedDispatcher,
    ScriptedPublisher,
    generator_process,
    math_item,
    model_tensors,
    perturbed,
    tensor_chunks,
)
from tests.judge_daemon import judge_daemon

pytestmark = pytest.mark.slow

GENERATOR_FLAGS = (
    "credits=4",
    "heartbeat_s=0.5",
    "learner_timeout_s=3",
    "resend_s=0.5",
    "shutdown_grace_s=3",
    "judge_timeout_s=30",
    "weight_load_step_mb=0.05",  # the tiny model's 1.5 MiB may load in steps as they arrive
)


@dataclass
class Cluster:
    dispatcher: ScriptedDispatcher
    publisher: ScriptedPublisher
    judge_address: str
    generators: dict[str, LiveProcess]
    model_dir: Path


@pytest.fixture(scope="module")
def cluster(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    judge_address = f"ipc://{tmp_path_factory.mktemp('judge')}/judge.ipc"
    judge = judge_daemon(judge_address, workers=1, math_timeout_s=5)
    dispatcher = ScriptedDispatcher()
    publisher = ScriptedPublisher()
    generators = {
        name: generator_process(dispatcher.address, judge_address, tiny_model_dir, name, *GENERATOR_FLAGS)
        for name in ("gen-a", "gen-b")
    }
    live = Cluster(dispatcher, publisher, judge_address, generators, tiny_model_dir)
    try:
        for process in generators.values():
            process.wait_for_line('"learner_connected"', 300)
        yield live
    finally:
        for process in live.generators.values():
            process.stop(timeout_s=20)
        live.dispatcher.close()
        publisher.close()
        judge.stop()


def wait(cluster: Cluster, predicate, timeout_s: float, what: str) -> None:  # type: ignore[no-untyped-def]
    try:
        cluster.dispatcher.wait(predicate, timeout_s, what)
    except TimeoutError as exc:
        logs = "\n".join(f"--- {n}\n{p.tail(15)}" for n, p in cluster.generators.items())
        raise AssertionError(f"{exc}\n{logs}") from None


def code_item(work_id: str) -> WorkItem:
    return WorkItem(
        id=work_id,
        kind="code",
        stage=0,
        policy_version=0,
        prompt="Write Python code to print the sum.",
        sampling=SamplingParams(n=2, max_tokens=12, seed=3),
        lease_s=60,
        tests=[Case(input="1 2\n", output="3\n")],
    )


def test_groups_come_back_with_the_judges_verdicts(cluster: Cluster) -> None:
    items = [math_item(f"m{i}", n=2, max_tokens=12) for i in range(4)]
    items.append(math_item("stops", n=4, max_tokens=48, stop=["e", "a", "t", "o"]))
    items.append(code_item("c0"))
    cluster.dispatcher.add(items)
    wait(cluster, lambda: len(cluster.dispatcher.log.accepted) == len(items), 120, "all groups accepted")

    log = cluster.dispatcher.log
    assert log.twice == [] and log.mismatched == []
    assert {g.generator_id for g in log.accepted.values()} <= {"gen-a", "gen-b"}
    tokenizer = AutoTokenizer.from_pretrained(cluster.model_dir)
    rejudge = []
    for item in items:
        group = log.accepted[item.id]
        assert group.policy_version == 0 and group.kind == item.kind
        assert len(group.completions) == item.sampling.n
        assert tokenizer.decode(group.prompt_token_ids).startswith("<|user|>")
        assert {"queue", "generate", "judge", "total"} <= group.timings.keys()
        for index, completion in enumerate(group.completions):
            assert len(completion.token_ids) == len(completion.logprobs) > 0
            assert (completion.logprobs <= 0).all()
            assert completion.truncated == (completion.finish_reason == "length")
            assert completion.reward == (1.0 if completion.judge_status in REWARDED_STATUSES else 0.0)
            if item.kind == "math":
                assert completion.judge_status in MATH_STATUSES
            text = tokenizer.decode(completion.token_ids, skip_special_tokens=False)
            text = text.removesuffix("<|endoftext|>")
            fields = {"answer": item.answer} if item.kind == "math" else {"tests": item.tests}
            request = JudgeRequest(id=f"{item.id}/{index}", kind=item.kind, response=text, **fields)  # type: ignore[arg-type]
            rejudge.append((completion.judge_status, request))
    short = [c for i in items[:4] for c in log.accepted[i.id].completions]
    # 12 tokens: cut at the limit, unless the model ended the turn itself (its end-of-text token).
    for c in short:
        assert (c.truncated and len(c.token_ids) == 12) or (
            not c.truncated and c.token_ids[-1] == tokenizer.eos_token_id
        )
    assert sum(c.truncated for c in short) >= len(short) // 2
    assert any(c.finish_reason == "stop" and not c.truncated for c in log.accepted["stops"].completions)
    with JudgeClient(cluster.judge_address) as client:
        verdicts = client.judge([request for _, request in rejudge], timeout_s=60)
    assert [status for status, _ in rejudge] == [verdicts[r.id].status for _, r in rejudge]


def test_a_new_version_aborts_stale_work_and_tags_later_groups(cluster: Cluster) -> None:
    dispatcher = cluster.dispatcher
    # the new version is ready before the old work goes out: it must still be sampling when
    # the new work arrives, and 8 x 480 tokens of the tiny model take about a second
    tensors = perturbed(model_tensors(cluster.model_dir), seed=1)
    announce: WeightAnnounce = cluster.publisher.publish(1, tensor_chunks(1, tensors, chunk_bytes=256 * 1024))
    old = [math_item(f"old{i}", n=8, max_tokens=480, version=0) for i in range(2)]
    dispatcher.add(old)
    wait(cluster, lambda: all(i.id in dispatcher.leases for i in old), 30, "old items issued")
    with dispatcher._lock:
        dispatcher.current_version = 1
        dispatcher.push(announce)
        dispatcher.add([math_item(f"new{i}", n=2, max_tokens=16, version=1) for i in range(4)])
    ids = [i.id for i in old] + [f"new{i}" for i in range(4)]
    wait(cluster, lambda: all(w in dispatcher.log.accepted for w in ids), 120, "old and new accepted")

    log = dispatcher.log
    assert log.twice == [] and log.mismatched == []
    stale = {w for a in log.aborted if a.reason.startswith("stale version") for w in a.work_ids}
    reasons = [(a.generator_id, a.work_ids, a.reason) for a in log.aborted]
    assert {i.id for i in old} <= stale, f"the old items were not aborted when v1 was required: {reasons}"
    for work_id in ids:
        assert log.accepted[work_id].policy_version == 1
    assert all(g.policy_version == 0 for g in log.groups if g.work_id.startswith("old") and g.attempt == 0)
    fetched = {(r.generator_id, r.version) for r in cluster.publisher.requests}
    assert {("gen-a", 1), ("gen-b", 1)} <= fetched
    wait(
        cluster,
        lambda: {h.sender for h in log.heartbeats[-8:] if h.policy_version == 1} == {"gen-a", "gen-b"},
        10,
        "heartbeats report version 1",
    )


def test_sigkill_mid_batch_every_item_comes_back_once(cluster: Cluster) -> None:
    dispatcher = cluster.dispatcher
    items = [math_item(f"k{i}", n=4, max_tokens=200, version=1, lease_s=8) for i in range(10)]
    dispatcher.add(items)
    wait(cluster, lambda: len(dispatcher.held_by("gen-a")) >= 2, 30, "gen-a holds work")
    victim = cluster.generators.pop("gen-a")
    victim.process.send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    held_when_killed = set(dispatcher.held_by("gen-a"))
    victim.process.wait(10)
    victim.stop()  # the engine processes it left behind
    ids = {i.id for i in items}
    wait(cluster, lambda: ids <= dispatcher.log.accepted.keys(), 180, "all items back after the kill")

    log = dispatcher.log
    assert log.twice == [] and log.mismatched == []
    assert held_when_killed and held_when_killed <= ids
    for work_id in held_when_killed:
        group = log.accepted[work_id]
        assert group.generator_id == "gen-b" and group.attempt >= 1, work_id
    assert [w for w in ids if log.issued[w] > 1] != []
    late_from_victim = [g for g in log.groups if g.generator_id == "gen-a" and g.work_id in held_when_killed]
    assert late_from_victim == []
    assert time.monotonic() - killed_at < 180


def test_the_survivor_reconnects_to_a_restarted_dispatcher(cluster: Cluster) -> None:
    old = cluster.dispatcher
    address = old.address
    old.close()
    time.sleep(4)  # past --learner-timeout-s: the generator notices the silence
    cluster.dispatcher = ScriptedDispatcher(address)
    cluster.dispatcher.current_version = 1
    cluster.dispatcher.add([math_item(f"r{i}", n=2, max_tokens=8, version=1) for i in range(3)])
    wait(cluster, lambda: len(cluster.dispatcher.log.accepted) == 3, 60, "work after the restart")
    assert [h.sender for h in cluster.dispatcher.log.hellos] == ["gen-b"]
    assert any('"learner_lost"' in line for line in cluster.generators["gen-b"].log)


def test_sigterm_finishes_or_hands_back_held_work(cluster: Cluster) -> None:
    dispatcher = cluster.dispatcher
    items = [math_item(f"t{i}", n=8, max_tokens=480, version=1) for i in range(4)]
    dispatcher.add(items)
    wait(cluster, lambda: len(dispatcher.held_by("gen-b")) == 4, 30, "gen-b holds the work")
    survivor = cluster.generators["gen-b"]
    survivor.process.send_signal(signal.SIGTERM)
    assert survivor.process.wait(30) == 0, survivor.tail()
    dispatcher.issuing = False
    log = dispatcher.log
    handed_back = {w for a in log.aborted if a.reason == "shutting down" for w in a.work_ids}
    for item in items:
        assert item.id in log.accepted or item.id in handed_back, item.id
    assert dispatcher.held_by("gen-b") == []
    assert any('"generator_stopped"' in line for line in survivor.log)
