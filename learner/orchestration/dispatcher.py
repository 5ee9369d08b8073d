"""The work dispatcher: serves the work ledger to generators over ZeroMQ from its own thread.

Generators speak to it as docs/protocol.md describes (Hello, Credit, RolloutGroup, WorkAborted,
Heartbeat; it answers Ack and pushes WorkBatch, WorkCancel, WeightAnnounce, Shutdown). Anyone may
ask it for its `Status` (StatusRequest): the generators connected, the step, the version. The
trainer calls `take_batch`, `publish` and `state` from its own thread; a lock guards the ledger.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from learner.orchestration.evaluation import PREFIX as EVAL_PREFIX
from learner.orchestration.evaluation import EvalRound
from learner.orchestration.work_ledger import WorkLedger
from learner.training.grpo import Batch
from proto.control import Ack, Heartbeat, Hello, Shutdown, Status, StatusRequest
from proto.curve import CurveServerKeys
from proto.message import Message
from proto.rollout import RolloutGroup, WorkAborted
from proto.sockets import Request, Server, SocketLimits
from proto.weights import WeightAnnounce
from proto.work import Credit, WorkBatch, WorkCancel, WorkItem

log = structlog.get_logger("learner.dispatcher")

RETRY_PUSH_S = 1.0  # a push that failed is tried again this often, until the generator is lost


@dataclass
class GeneratorSeen:
    peer: bytes
    last_seen: float
    credits: int = 0
    info: dict[str, str] = field(default_factory=dict)
    process: tuple[str, int] = ("", 0)  # host and pid its Hello gave (pid 0: not given)

    def same_process(self, hello: Hello) -> bool:
        """Is this Hello a reconnection of the process already known (which still holds its work),
        rather than a new process under the same id (which holds nothing)?"""
        return hello.pid != 0 and (hello.host, hello.pid) == self.process


def fair_shares(free: dict[str, int], wanted: int) -> dict[str, int]:
    """How many of `wanted` items each generator gets: in proportion to its free credits (the
    largest remainders get the items left over), never more than those. A step's work is then
    spread over every generator with room, not taken whole by the first one that asks."""
    total = sum(free.values())
    if wanted >= total:
        return dict(free)
    exact = {g: wanted * n / total for g, n in free.items()}
    shares = {g: int(x) for g, x in exact.items()}
    by_remainder = sorted(free, key=lambda g: (-(exact[g] - shares[g]), -free[g], g))
    for g in by_remainder[: wanted - sum(shares.values())]:
        shares[g] += 1
    return {g: n for g, n in shares.items() if n > 0}


class Dispatcher:
    def __init__(
        self,
        ledger: WorkLedger,
        address: str = "tcp://127.0.0.1:*",
        *,
        curve: CurveServerKeys | None = None,
        heartbeat_timeout_s: float = 30.0,
        reconcile_grace_s: float = 10.0,
        tick_ms: int = 20,
        limits: SocketLimits | None = None,
        drain_s: float = 1.0,
    ) -> None:
        self.ledger = ledger
        self.heartbeat_timeout_s = heartbeat_timeout_s
        # A heartbeat lists what the generator holds; work pushed to it longer ago than this and
        # not listed never reached it. (A push still on its way is younger than this.)
        self.reconcile_grace_s = reconcile_grace_s
        self.tick_ms = tick_ms
        # After stop, requests are still read this long and answered with the Shutdown itself:
        # a generator that sent a result just then learns at once why nobody will take it,
        # whether or not the pushed notice reached it.
        self.drain_s = drain_s
        self._shutdown: Shutdown | None = None
        self.generators: dict[str, GeneratorSeen] = {}
        self.announcement: WeightAnnounce | None = None
        self.eval_round: EvalRound | None = None
        self._outbox: list[tuple[str, Message]] = []
        self._unsent: list[tuple[str, Message]] = []  # pushes that failed, oldest first
        self._retry_at = 0.0
        self._changed = threading.Condition()
        self._stop = threading.Event()
        # Bound here so that a bad address fails in the caller; used only by the thread below.
        self._server = Server(address, curve=curve, limits=limits or SocketLimits(), name="dispatcher")
        self.address = self._server.address
        self._thread = threading.Thread(target=self._run, name="dispatcher", daemon=True)

    # -- the trainer's side -------------------------------------------------------------------

    def start(self) -> Dispatcher:
        self._thread.start()
        return self

    def take_batch(
        self, timeout_s: float, on_ready: Callable[[list[RolloutGroup]], None] | None = None
    ) -> Batch:
        """Block until the batch of the next step is ready; TimeoutError after `timeout_s`.
        `on_ready` gets the groups certain to train in it as they come in, each once, called
        without the lock (the dispatcher goes on accepting meanwhile)."""
        deadline = time.monotonic() + timeout_s
        handed: set[str] = set()
        while True:
            with self._changed:
                if not self._thread.is_alive():
                    raise RuntimeError("the dispatcher thread has stopped")
                taken = self.ledger.take_batch()
                if taken is not None:
                    batch, cancel = taken
                    self._queue_cancels(cancel, "no longer trainable")
                    return batch
                fresh = [] if on_ready is None else self.ledger.bound_to_train(exclude=handed)
                if not fresh:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise TimeoutError(
                            f"no batch for step {self.ledger.on_policy.next_step} within {timeout_s:.0f} s: "
                            f"{len(self.ledger.ready)} groups ready, {len(self.ledger.leases)} out, "
                            f"{len(self.generators)} generators connected"
                        )
                    self._changed.wait(min(remaining, 1.0))
                    continue
            assert on_ready is not None
            handed |= {g.work_id for g in fresh}
            on_ready(fresh)

    def publish(self, announcement: WeightAnnounce) -> None:
        """A new policy version is ready to be fetched: tell every generator, then issue work for it."""
        with self._changed:
            self.ledger.publish(announcement.version)
            self.announcement = announcement
            for generator_id in self.generators:
                self._outbox.append((generator_id, announcement))

    def evaluate(
        self, evaluation: EvalRound, timeout_s: float, progress: Callable[[int], None] | None = None
    ) -> EvalRound:
        """Run one held-out evaluation round to its end (its items go out before training work);
        `progress` hears how many prompts are scored so far, about once a second."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            self.eval_round = evaluation
            try:
                while not evaluation.done:
                    if progress is not None:
                        progress(len(evaluation.results))
                    if not self._thread.is_alive():
                        raise RuntimeError("the dispatcher thread has stopped")
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise TimeoutError(
                            f"evaluation {evaluation.tag}: {len(evaluation.results)} of "
                            f"{len(evaluation.prompts)} prompts scored within {timeout_s:.0f} s"
                        )
                    self._changed.wait(min(remaining, 1.0))
            finally:
                self.eval_round = None
        return evaluation

    def state(self) -> dict[str, Any]:
        with self._changed:
            return self.ledger.state()

    def counts(self) -> dict[str, int]:
        with self._changed:
            return dict(self.ledger.counts)

    def stop(self, reason: str = "run finished", deadline_s: float = 5.0) -> None:
        with self._changed:
            self._shutdown = Shutdown(reason=reason, deadline_s=deadline_s)
            for generator_id in self.generators:
                self._outbox.append((generator_id, self._shutdown))
            self._stop.set()  # under the lock: once the notice is out, the serving loop is over
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        else:
            self._server.close()

    # -- the dispatcher thread -----------------------------------------------------------------

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                request = self._server.recv(timeout_ms=self.tick_ms)
                with self._changed:
                    if request is not None:
                        self._handle(request)
                    self._housekeeping()
                    self._flush()
                    self._changed.notify_all()
            with self._changed:
                self._flush()  # the shutdown notices
            self._drain()
        except Exception:
            log.exception("dispatcher_failed")
            raise
        finally:
            self._server.close(linger_ms=1_000)

    def _drain(self) -> None:
        assert self._shutdown is not None
        until = time.monotonic() + self.drain_s
        while (left_ms := int((until - time.monotonic()) * 1000)) > 0:
            request = self._server.recv(timeout_ms=left_ms)
            if request is None:
                break
            if isinstance(request.message, StatusRequest):
                with self._changed:
                    self._server.reply(request, self._status())
            else:
                self._server.reply(request, self._shutdown)

    def _handle(self, request: Request) -> None:
        message = request.message
        if isinstance(message, StatusRequest):
            self._server.reply(request, self._status())
            return
        if isinstance(message, (Hello, Heartbeat)) and message.role != "generator":
            # a supervisor or another client checking that the dispatcher answers: no generator
            self._server.reply(request, Ack())
            return
        sender = getattr(message, "generator_id", None) or getattr(message, "sender", None)
        if not isinstance(message, (Hello, Credit, RolloutGroup, WorkAborted, Heartbeat)) or sender is None:
            self._server.reply_error(request, "bad_request", f"the dispatcher does not take {message.TYPE}")
            return
        seen = self.generators.get(sender)
        if isinstance(message, (Hello, Credit)):
            # Work is pushed to the socket that asks for it; heartbeats and results may come
            # from other sockets of the same generator.
            if seen is None or isinstance(message, Hello):
                if seen is None:
                    log.info("generator_joined", generator=sender)
                if isinstance(message, Hello) and not (seen is not None and seen.same_process(message)):
                    self._release_all(sender)
                seen = self.generators[sender] = GeneratorSeen(request.peer, time.monotonic())
                if isinstance(message, Hello):
                    seen.info = dict(message.info)
                    seen.process = (message.host, message.pid)
                if self.announcement is not None:
                    self._outbox.append((sender, self.announcement))
            seen.peer = request.peer
        if seen is not None:
            seen.last_seen = time.monotonic()
        detail = ""
        if isinstance(message, Credit):
            assert seen is not None
            seen.credits += message.credits
        elif isinstance(message, RolloutGroup):
            if message.work_id.startswith(EVAL_PREFIX):
                detail = self.eval_round.accept(message) if self.eval_round is not None else "late"
            else:
                detail = self.ledger.accept(message)
        elif isinstance(message, WorkAborted):
            released = sum(book.release(message.work_ids, sender) for book in self._books())
            detail = f"released {released}"
        elif isinstance(message, Heartbeat) and message.work_ids is not None and seen is not None:
            self._reconcile(sender, set(message.work_ids))
        self._server.reply(request, Ack(detail=detail))

    def _status(self) -> Status:
        return Status(
            generators=sorted(self.generators),
            step=self.ledger.on_policy.next_step,
            version=self.announcement.version if self.announcement is not None else None,
            stage=self.ledger.stage_index,
            done=self.ledger.done,
        )

    def _books(self) -> list[WorkLedger | EvalRound]:
        """Where leases are kept: the training ledger, and the evaluation round while one runs."""
        return [self.ledger] if self.eval_round is None else [self.ledger, self.eval_round]

    def _take_back(
        self, generator_id: str, pick: Callable[[WorkLedger | EvalRound], list[str]], reason: str
    ) -> list[str]:
        """End the leases `pick` chooses in each book: the work goes out again, and the generator
        is told to drop whatever of it it may still hold."""
        ended = []
        for book in self._books():
            chosen = pick(book)
            book.release(chosen, generator_id)
            ended += chosen
        self._queue_cancels({generator_id: ended}, reason)
        return ended

    def _reconcile(self, generator_id: str, held: set[str]) -> None:
        """Re-issue now the work leased to `generator_id` that it says it never got.

        Otherwise that work would wait for its lease deadline, and with it every step that
        needs it. Should the lost push turn up after all, the cancel sent here withdraws it.
        """
        grace = self.reconcile_grace_s
        unknown = self._take_back(
            generator_id,
            lambda book: book.leases.unknown_to(generator_id, held, book.clock() - grace),
            "never received",
        )
        if unknown:
            self.ledger.counts["unknown_to_generator"] += len(unknown)
            log.warning(
                "leases_unknown_to_generator",
                generator=generator_id,
                work_ids=unknown[:10],
                count=len(unknown),
            )

    def _release_all(self, generator_id: str) -> None:
        """A Hello starts a generator afresh (a restarted process holds nothing): what its id held
        goes out again now rather than when its leases run out."""
        held = self._take_back(
            generator_id, lambda book: book.leases.held_by(generator_id), "generator restarted"
        )
        if held:
            log.warning("generator_restarted", generator=generator_id, released=len(held))

    def _housekeeping(self) -> None:
        now = time.monotonic()
        lost = {g for g, seen in self.generators.items() if now - seen.last_seen > self.heartbeat_timeout_s}
        for generator_id in lost:
            log.warning(
                "generator_lost",
                generator=generator_id,
                silent_s=round(now - self.generators[generator_id].last_seen, 1),
            )
            del self.generators[generator_id]
        for book in self._books():
            self._queue_cancels(book.expire(lost), "lease expired")
        free = {g: seen.credits for g, seen in self.generators.items() if seen.credits > 0}
        if not free:
            return
        items: dict[str, list[WorkItem]] = {g: [] for g in free}
        if self.eval_round is not None:
            for generator_id, share in fair_shares(free, len(self.eval_round.queue)).items():
                items[generator_id] += self.eval_round.issue(generator_id, share)
        left = {g: n - len(items[g]) for g, n in free.items()}
        for generator_id, share in fair_shares(left, self.ledger.wanted()).items():
            items[generator_id] += self.ledger.issue(generator_id, share)
        for generator_id, issued in items.items():
            if issued:
                self.generators[generator_id].credits -= len(issued)
                self._outbox.append((generator_id, WorkBatch(items=issued)))

    def _queue_cancels(self, cancel: dict[str, list[str]], reason: str) -> None:
        for generator_id, work_ids in cancel.items():
            if generator_id in self.generators and work_ids:
                self._outbox.append((generator_id, WorkCancel(work_ids=work_ids, reason=reason)))

    def _flush(self) -> None:
        """Send what is queued. A push that fails (the generator's connection is down, or it is
        reconnecting) is tried again every RETRY_PUSH_S, and everything queued after it for that
        generator waits behind it, so that an announcement still arrives before the work that
        needs it. What a generator was still owed when it is dropped as lost goes with it."""
        now = time.monotonic()
        queue, tried = self._unsent + self._outbox, len(self._unsent)  # queue[tried:]: new ones
        waiting = {g for g, _ in self._unsent} if now < self._retry_at else set()
        self._unsent, self._outbox = [], []
        for index, (generator_id, message) in enumerate(queue):
            seen = self.generators.get(generator_id)
            if seen is None:
                continue
            if generator_id not in waiting:
                if self._server.send(seen.peer, message):
                    continue
                if index >= tried:
                    log.warning(
                        "push_failed", generator=generator_id, type=message.TYPE, retry_s=RETRY_PUSH_S
                    )
                waiting.add(generator_id)
                self._retry_at = now + RETRY_PUSH_S
            self._unsent.append((generator_id, message))
