"""JudgeClient: many requests in flight to a judge daemon, verdicts back as they complete.

    from proto.judge_client import JudgeClient
    with JudgeClient("tcp://127.0.0.1:5555") as client:
        client.submit(requests)                    # JudgeRequest, or an iterable of them
        for verdict in client.verdicts(timeout_s=600):
            use(verdict)                           # each submitted id exactly once
        client.stats()                             # the daemon's JudgeStats

    client.poll(timeout_s)  -> list[Verdict]       # what completed within timeout_s (for event loops)
    client.pending          -> int                 # submitted, not yet returned

Guarantees:
- Every submitted request yields exactly one `Verdict`: the judge's, or, if no verdict came within
  `request_timeout_s` on each of `attempts` sends, one with status `timeout` (an unjudged status,
  see proto.judge.UNJUDGED_STATUSES: never to be used as a reward of 0).
- Nothing is counted twice: a resend carries the same request id (the daemon joins it to the
  running request), and any later verdict for an id already returned is dropped (`duplicates`).
- `busy` and `shutting_down` answers are retried with a growing, jittered backoff without using
  up an attempt; the same when the daemon cannot be reached (it may be restarting). The number
  of requests on the wire (`window`, at most `max_in_flight`) halves on `busy` and grows by one
  per verdict, so a full daemon is not flooded with requests it can only bounce.
- A `bad_request` answer becomes a `bad_request` verdict (the request itself is wrong; no retry).
- Ids must be unique among pending requests; `submit` raises ValueError otherwise.
Not thread-safe: use a client from one thread.
"""

from __future__ import annotations

import heapq
import itertools
import random
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import structlog

from proto.control import Error
from proto.curve import CurveClientKeys
from proto.judge import JudgeRequest, JudgeStats, StatsRequest, Verdict
from proto.sockets import Client, SocketLimits

log = structlog.get_logger("judge.client")

_RETRY_LATER = frozenset({"busy", "shutting_down", "unavailable"})


@dataclass
class _Pending:
    request: JudgeRequest
    attempts: int = 0  # sends that count towards `attempts` (not the ones answered busy)
    sent_at: float | None = None  # None: not on the wire
    queued: bool = True  # waiting in the outbox
    backoffs: int = 0
    wire_ids: list[bytes] = field(default_factory=list)
    give_up_at: float = float("inf")  # even if never sent (daemon unreachable or busy throughout)


class JudgeClient:
    def __init__(
        self,
        address: str,
        *,
        curve: CurveClientKeys | None = None,
        request_timeout_s: float = 300.0,
        attempts: int = 3,
        max_in_flight: int = 512,
        backoff_s: float = 0.05,
        max_backoff_s: float = 2.0,
        identity: str | None = None,
        max_request_mb: int = 64,
    ) -> None:
        if attempts < 1:
            raise ValueError("attempts: at least 1")
        self.address = address
        self.request_timeout_s = request_timeout_s
        self.attempts = attempts
        self.max_in_flight = max_in_flight
        # Requests on the wire at once: halved on every `busy`, grown by one per verdict, so a
        # full daemon is not flooded with requests it can only bounce.
        self.window = max_in_flight
        self._window_cut_at = 0.0
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.duplicates = 0  # verdicts dropped because their id was already answered
        self.resends = 0  # sends after a timeout, a busy answer or an unreachable daemon
        # Sends never block: a daemon that cannot take a request now is retried after a backoff.
        limits = SocketLimits(send_timeout_ms=0, max_frame_bytes=max_request_mb << 20)
        self._client = Client(address, curve=curve, limits=limits, identity=identity)
        self._pending: dict[str, _Pending] = {}
        self._outbox: list[tuple[float, int, str]] = []  # heap of (not before, order, id)
        self._order = itertools.count()
        self._sent: deque[tuple[float, str, bytes]] = deque()  # (sent at, id, wire id), in order
        self._wire: dict[bytes, str] = {}  # wire request id -> request id
        self._on_wire = 0
        self._ready: deque[Verdict] = deque()

    # ---- the interface -------------------------------------------------------------------
    def submit(self, requests: JudgeRequest | Iterable[JudgeRequest]) -> None:
        if isinstance(requests, JudgeRequest):
            requests = [requests]
        for request in requests:
            if request.id in self._pending:
                raise ValueError(f"id: {request.id!r} is already pending")
            give_up_at = time.monotonic() + self.attempts * self.request_timeout_s
            self._pending[request.id] = _Pending(request, give_up_at=give_up_at)
            heapq.heappush(self._outbox, (0.0, next(self._order), request.id))
        self._send_due()

    @property
    def pending(self) -> int:
        return len(self._pending) + len(self._ready)

    @property
    def connection(self) -> Client:
        """The socket to the daemon, for an event loop that waits on it with others (`poll` reads)."""
        return self._client

    def poll(self, timeout_s: float = 0.0) -> list[Verdict]:
        """Verdicts that completed, waiting up to `timeout_s` for the first one."""
        deadline = time.monotonic() + timeout_s
        while True:
            self._pump(deadline)
            if self._ready or time.monotonic() >= deadline or not self._pending:
                break
        verdicts = list(self._ready)
        self._ready.clear()
        return verdicts

    def verdicts(self, timeout_s: float | None = None) -> Iterator[Verdict]:
        """Yield verdicts as they complete until none is pending (or `timeout_s` passes)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while self.pending:
            remaining = 1.0 if deadline is None else deadline - time.monotonic()
            if remaining <= 0:
                return
            yield from self.poll(min(remaining, 1.0))

    def judge(self, requests: Iterable[JudgeRequest], timeout_s: float | None = None) -> dict[str, Verdict]:
        """Submit and wait: verdicts by request id."""
        requests = list(requests)
        self.submit(requests)
        missing = {request.id for request in requests}
        found = {}
        for verdict in self.verdicts(timeout_s):
            found[verdict.id] = verdict
            missing.discard(verdict.id)
            if not missing:
                break
        return found

    def stats(self, timeout_s: float = 5.0) -> JudgeStats:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                remaining_ms = max(1, int((deadline - time.monotonic()) * 1000))
                reply = self._client.request(StatsRequest(), timeout_ms=remaining_ms)
                break
            except TimeoutError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.02)  # not connected yet
        if not isinstance(reply, JudgeStats):
            raise RuntimeError(f"expected judge_stats from {self.address}, got {reply.TYPE}")
        return reply

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> JudgeClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ---- the machinery -------------------------------------------------------------------
    def _pump(self, deadline: float) -> None:
        self._send_due()
        self._expire()
        wake = [deadline]
        if self._outbox and self._on_wire < self.window:
            wake.append(self._outbox[0][0])
        if self._sent:
            wake.append(self._sent[0][0] + self.request_timeout_s)
        reply = self._client.recv(max(0, int((min(wake) - time.monotonic()) * 1000)))
        while reply is not None:
            self._receive(reply.request_id, reply.message)
            reply = self._client.recv(0)

    def _send_due(self) -> None:
        now = time.monotonic()
        while self._outbox and self._on_wire < self.window and self._outbox[0][0] <= now:
            _, _, request_id = heapq.heappop(self._outbox)
            pending = self._pending.get(request_id)
            if pending is None or not pending.queued:
                continue  # answered meanwhile
            try:
                wire_id = self._client.send(pending.request)
            except TimeoutError:
                self._requeue(request_id, pending, back_off=True)
                return  # the daemon is not reachable now: try again later
            pending.queued = False
            pending.sent_at = time.monotonic()
            pending.attempts += 1
            pending.wire_ids.append(wire_id)
            self._wire[wire_id] = request_id
            self._sent.append((pending.sent_at, request_id, wire_id))
            self._on_wire += 1
            if len(pending.wire_ids) > 1:
                self.resends += 1

    def _requeue(self, request_id: str, pending: _Pending, *, back_off: bool) -> None:
        not_before = 0.0
        if back_off:
            pending.backoffs += 1
            delay = min(self.max_backoff_s, self.backoff_s * 2 ** min(pending.backoffs, 16))
            not_before = time.monotonic() + delay * random.uniform(0.5, 1.0)
        pending.queued = True
        heapq.heappush(self._outbox, (not_before, next(self._order), request_id))

    def _off_wire(self, pending: _Pending) -> None:
        if pending.sent_at is not None:
            pending.sent_at = None
            self._on_wire -= 1

    def _expire(self) -> None:
        now = time.monotonic()
        while self._outbox and self._pending_gave_up(self._outbox[0][2], now):
            heapq.heappop(self._outbox)
        while self._sent and now - self._sent[0][0] >= self.request_timeout_s:
            _, request_id, wire_id = self._sent.popleft()
            pending = self._pending.get(request_id)
            if pending is None or pending.sent_at is None or pending.wire_ids[-1] != wire_id:
                continue  # answered, or sent again since
            self._off_wire(pending)
            if pending.attempts >= self.attempts:
                detail = (
                    f"no verdict from the judge at {self.address} after {pending.attempts} attempts "
                    f"of {self.request_timeout_s:g} s"
                )
                self._deliver(Verdict(id=request_id, reward=0, status="timeout", detail=detail))
            else:
                log.warning("judge_request_resent", id=request_id, attempt=pending.attempts + 1)
                self._requeue(request_id, pending, back_off=False)

    def _pending_gave_up(self, request_id: str, now: float) -> bool:
        """The outbox's first request has waited past its last chance: answer it `timeout`."""
        pending = self._pending.get(request_id)
        if pending is None or not pending.queued:
            return True
        if now < pending.give_up_at:
            return False
        detail = (
            f"no verdict from the judge at {self.address} within {self.attempts} x "
            f"{self.request_timeout_s:g} s (it was unreachable or busy)"
        )
        self._deliver(Verdict(id=request_id, reward=0, status="timeout", detail=detail))
        return True

    def _receive(self, wire_id: bytes, message: Any) -> None:
        request_id = self._wire.get(wire_id)
        pending = self._pending.get(request_id) if request_id is not None else None
        if pending is None or request_id is None:
            if isinstance(message, Verdict):
                self.duplicates += 1  # a second verdict for an id already returned
            return
        if isinstance(message, Verdict):
            if message.id != request_id:
                message = message.model_copy(update={"id": request_id})
            self._deliver(message)
            return
        if isinstance(message, Error) and message.code == "bad_request":
            detail = message.detail[:2000]
            self._deliver(Verdict(id=request_id, reward=0, status="bad_request", detail=detail))
            return
        if not isinstance(message, Error):
            log.warning("judge_unexpected_reply", type=message.TYPE, id=request_id)
            return
        if pending.sent_at is None or wire_id != pending.wire_ids[-1]:
            return  # an answer to an earlier send; the latest one is still out or queued
        sent_at = pending.sent_at
        self._off_wire(pending)
        if message.code in _RETRY_LATER:
            pending.attempts -= 1  # the daemon did not take it: not an attempt
            if sent_at > self._window_cut_at:  # once per round trip, not once per bounced request
                self.window = max(1, min(self.window, self._on_wire + 1) // 2)
                self._window_cut_at = time.monotonic()
            self._requeue(request_id, pending, back_off=True)
        elif pending.attempts >= self.attempts:
            detail = f"the judge failed: {message.code}: {message.detail}"[:2000]
            self._deliver(Verdict(id=request_id, reward=0, status="sandbox_error", detail=detail))
        else:
            self._requeue(request_id, pending, back_off=True)

    def _deliver(self, verdict: Verdict) -> None:
        pending = self._pending.pop(verdict.id, None)
        if pending is None:
            self.duplicates += 1
            return
        self._off_wire(pending)
        pending.queued = False
        for wire_id in pending.wire_ids:
            self._wire.pop(wire_id, None)
        self._ready.append(verdict)
        self.window = min(self.max_in_flight, self.window + 1)
