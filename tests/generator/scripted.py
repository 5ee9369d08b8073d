"""The generator's peers, scripted for tests: a weight publisher, a work dispatcher, a judge daemon.

They speak proto/ over real ZeroMQ sockets (proto.sockets.Server), as the learner and the judge
do, but every decision they take is written here so that a test can steer and inspect it.
"""

from __future__ import annotations

import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from learner.training.publisher import weight_chunks
from proto.control import Ack, Heartbeat, Hello
from proto.judge import JudgeRequest, Verdict
from proto.message import Message
from proto.rollout import RolloutGroup, WorkAborted
from proto.sockets import Server
from proto.weights import WeightAnnounce, WeightChunk, WeightRequest
from proto.work import Credit, SamplingParams, WorkBatch, WorkCancel, WorkItem
from tests.judge_daemon import LiveProcess


def tensor_chunks(version: int, tensors: dict[str, torch.Tensor], chunk_bytes: int) -> list[WeightChunk]:
    """A version as the learner's publisher sends it: every tensor in `chunk_bytes` pieces, in seq order."""
    return list(weight_chunks(tensors, version, chunk_bytes))


@dataclass
class Hold:
    """Stop a stream after `after` chunks until `release` is set; then go on, or fail (`fail`)."""

    after: int
    fail: bool = False
    reached: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)


class ScriptedPublisher:
    """Answers WeightRequest with the chunks of a published version (or a scripted error)."""

    def __init__(self) -> None:
        self.server = Server("tcp://127.0.0.1:*", name="test-publisher")
        self.address = self.server.address
        self.versions: dict[int, list[WeightChunk]] = {}
        self.errors: deque[tuple[str, str]] = deque()  # answered to the next requests, in order
        self.requests: list[WeightRequest] = []
        self.peers: list[bytes] = []  # the connection each request came on
        self.holds: dict[int, Hold] = {}  # version -> where its next stream stops and waits
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def publish(self, version: int, chunks: list[WeightChunk]) -> WeightAnnounce:
        self.versions[version] = chunks
        names = {c.name for c in chunks}
        total = sum(c.data_bytes for c in chunks)
        return WeightAnnounce(
            version=version, num_tensors=len(names), total_bytes=total, address=self.address
        )

    def _serve(self) -> None:
        while not self._stop.is_set():
            request = self.server.recv(timeout_ms=50)
            if request is None:
                continue
            message = request.message
            if not isinstance(message, WeightRequest):
                self.server.reply_error(request, "bad_request", f"expected weight_request: {message.TYPE}")
                continue
            self.requests.append(message)
            self.peers.append(request.peer)
            if self.errors:
                code, detail = self.errors.popleft()
                self.server.reply_error(request, code, detail)  # type: ignore[arg-type]
            elif message.version not in self.versions:
                self.server.reply_error(request, "not_found", f"version {message.version} not held")
            else:
                chunks = self.versions[message.version]
                hold = self.holds.pop(message.version, None)
                for chunk in chunks[: None if hold is None else hold.after]:
                    self.server.reply(request, chunk)
                if hold is not None:
                    hold.reached.set()
                    hold.release.wait(60)
                    if hold.fail:
                        self.server.reply_error(request, "internal", "weight transfer failed: scripted")
                    else:
                        for chunk in chunks[hold.after :]:
                            self.server.reply(request, chunk)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.server.close()


class ScriptedJudge:
    """Answers each JudgeRequest with `verdict(request, times_seen)`."""

    def __init__(self, verdict: Callable[[JudgeRequest, int], Verdict]) -> None:
        self.server = Server("tcp://127.0.0.1:*", name="test-judge")
        self.address = self.server.address
        self.seen: Counter[str] = Counter()
        self.verdict = verdict
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            request = self.server.recv(timeout_ms=20)
            if request is not None and isinstance(request.message, JudgeRequest):
                self.seen[request.message.id] += 1
                self.server.reply(request, self.verdict(request.message, self.seen[request.message.id]))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.server.close()


def correct(request: JudgeRequest, times: int) -> Verdict:
    return Verdict(id=request.id, reward=1, status="correct")


@dataclass
class Lease:
    item: WorkItem
    generator_id: str
    deadline: float


@dataclass
class DispatcherLog:
    groups: list[RolloutGroup] = field(default_factory=list)  # every group received, resends too
    accepted: dict[str, RolloutGroup] = field(default_factory=dict)  # first valid answer per id
    late: list[RolloutGroup] = field(default_factory=list)
    mismatched: list[RolloutGroup] = field(default_factory=list)  # version or attempt not the lease's
    swallowed: list[RolloutGroup] = field(default_factory=list)
    twice: list[str] = field(default_factory=list)  # work ids accepted a second time (must stay empty)
    aborted: list[WorkAborted] = field(default_factory=list)
    heartbeats: list[Heartbeat] = field(default_factory=list)
    hellos: list[Hello] = field(default_factory=list)
    issued: Counter[str] = field(default_factory=Counter)  # work id -> times issued


class ScriptedDispatcher:
    """Issues queued items to generators as they credit, with leases; re-issues expired or aborted ones.

    Keeps the first valid answer per work id (same attempt as the live lease), as the protocol says.
    An item handed back is issued again for the newest version, as the learner does.
    """

    def __init__(self, address: str = "tcp://127.0.0.1:*") -> None:
        self.server = Server(address, name="test-dispatcher")
        self.address = self.server.address
        self.log = DispatcherLog()
        self.queue: deque[WorkItem] = deque()
        self.leases: dict[str, Lease] = {}
        self.credits: dict[str, int] = {}
        self.peers: dict[str, bytes] = {}
        self.items: dict[str, WorkItem] = {}  # latest attempt of every item ever queued
        self.issuing = True
        self.current_version = 0
        self.swallow = 0  # rollout groups to drop without an Ack
        self._pushes: deque[tuple[str | None, Message]] = deque()
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    # -- the test's side -------------------------------------------------------------------

    def add(self, items: list[WorkItem]) -> None:
        with self._lock:
            for item in items:
                self.items[item.id] = item
                self.queue.append(item)

    def push(self, message: Message, generator_id: str | None = None) -> None:
        """Send `message` to one generator, or to every one known (None)."""
        with self._lock:
            self._pushes.append((generator_id, message))

    def wait(self, predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            with self._lock:
                if predicate():
                    return
            if time.monotonic() > deadline:
                with self._lock:
                    state = (
                        f"accepted={len(self.log.accepted)} leases={sorted(self.leases)} "
                        f"queue={len(self.queue)} aborted={[a.work_ids for a in self.log.aborted]}"
                    )
                raise TimeoutError(f"{what}: not within {timeout_s} s ({state})")
            time.sleep(0.05)

    def held_by(self, generator_id: str) -> list[str]:
        with self._lock:
            return [w for w, lease in self.leases.items() if lease.generator_id == generator_id]

    def close(self) -> None:
        if self._stop.is_set():
            return  # closed already
        self._stop.set()
        self._thread.join(5)
        self.server.close()

    # -- the dispatcher's side -------------------------------------------------------------

    def _serve(self) -> None:
        while not self._stop.is_set():
            request = self.server.recv(timeout_ms=20)
            with self._lock:
                if request is not None:
                    if isinstance(request.message, RolloutGroup) and self.swallow > 0:
                        self.swallow -= 1  # as if lost on the way: no Ack
                        self.log.swallowed.append(request.message)
                        continue
                    self._handle(request.peer, request.message)
                    self.server.reply(request, Ack())
                self._expire()
                # pushes first: an announcement goes out before the work that needs its version,
                # as the learner's dispatcher sends them
                while self._pushes:
                    generator_id, message = self._pushes.popleft()
                    targets = list(self.peers) if generator_id is None else [generator_id]
                    for target in targets:
                        self.server.send(self.peers[target], message)
                self._issue()

    def _handle(self, peer: bytes, message: Message) -> None:
        if isinstance(message, Hello):
            self.log.hellos.append(message)
            self.peers[message.sender] = peer
            self.credits[message.sender] = 0
        elif isinstance(message, Credit):
            self.peers[message.generator_id] = peer
            self.credits[message.generator_id] = self.credits.get(message.generator_id, 0) + message.credits
        elif isinstance(message, Heartbeat):
            self.log.heartbeats.append(message)
        elif isinstance(message, RolloutGroup):
            self.log.groups.append(message)
            lease = self.leases.get(message.work_id)
            if lease is None or lease.item.attempt != message.attempt:
                self.log.late.append(message)
                return
            if message.policy_version != lease.item.policy_version:
                self.log.mismatched.append(message)
                return
            del self.leases[message.work_id]
            if message.work_id in self.log.accepted:
                self.log.twice.append(message.work_id)
            self.log.accepted[message.work_id] = message
        elif isinstance(message, WorkAborted):
            self.log.aborted.append(message)
            for work_id in message.work_ids:
                lease = self.leases.get(work_id)
                if lease is not None and lease.generator_id == message.generator_id:
                    del self.leases[work_id]
                    self._requeue(lease.item)

    def _requeue(self, item: WorkItem) -> None:
        version = max(item.policy_version, self.current_version)
        again = item.model_copy(update={"attempt": item.attempt + 1, "policy_version": version})
        self.items[item.id] = again
        self.queue.append(again)

    def _expire(self) -> None:
        now = time.monotonic()
        for work_id, lease in list(self.leases.items()):
            if lease.deadline < now:
                del self.leases[work_id]
                self._requeue(lease.item)
                if lease.generator_id in self.peers:
                    cancel = WorkCancel(work_ids=[work_id], reason="lease expired")
                    self.server.send(self.peers[lease.generator_id], cancel)

    def _issue(self) -> None:
        if not self.issuing:
            return
        for generator_id, credits in self.credits.items():
            items = []
            while credits > 0 and self.queue:
                item = self.queue.popleft()
                items.append(item)
                self.leases[item.id] = Lease(item, generator_id, time.monotonic() + item.lease_s)
                self.log.issued[item.id] += 1
                credits -= 1
            self.credits[generator_id] = credits
            if items:
                self.server.send(self.peers[generator_id], WorkBatch(items=items))


def math_item(
    work_id: str,
    *,
    version: int = 0,
    n: int = 2,
    max_tokens: int = 16,
    lease_s: float = 60.0,
    prompt: str = "What is 2 + 3?",
    **sampling: object,
) -> WorkItem:
    return WorkItem(
        id=work_id,
        kind="math",
        stage=0,
        policy_version=version,
        prompt=prompt,
        sampling=SamplingParams(n=n, max_tokens=max_tokens, **sampling),  # type: ignore[arg-type]
        lease_s=lease_s,
        answer="5",
    )


def generator_process(
    dispatcher: str, judge: str, model: Path, generator_id: str, *extra: str
) -> LiveProcess:
    command = [
        sys.executable, "-m", "generator",
        f"learner={dispatcher}",
        f"judge={judge}",
        f"model={model}",
        f"generator_id={generator_id}",
        "engine.max_model_len=512",
        *extra,
    ]  # fmt: skip
    return LiveProcess(command)


def perturbed(tensors: dict[str, torch.Tensor], seed: int, scale: float = 0.5) -> dict[str, torch.Tensor]:
    """Weights changed on purpose: every tensor plus noise of `scale` times its own spread."""
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for name, tensor in tensors.items():
        spread = float(tensor.float().std()) if tensor.numel() > 1 else 1.0
        noise = torch.randn(tensor.shape, generator=generator) * scale * max(spread, 1e-3)
        out[name] = (tensor.float() + noise).to(tensor.dtype)
    return out


def model_tensors(model_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(model_dir / "model.safetensors"))
