"""Between requests and workers: a bounded queue, deadlines per task, and de-duplication.

Requests are verdicts (`JudgeRequest`) or runs (`RunRequest`); both wait in the one queue.

Used by the daemon (waiters are socket peers) and by `python -m judge check` without a daemon
(waiters are input lines). A request whose key is already queued or running is not judged again:
its waiter joins the first one and both get the same verdict.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any, Literal

from judge.code_check import ANSWER_MARGIN_S
from judge.config import JudgeConfig
from judge.outcome import Outcome
from judge.pool import Task, WorkerPool
from judge.sandbox import resolve_limits
from judge.stats import JudgeCounters
from proto.judge import JudgeRequest, JudgeStats, Verdict
from proto.run import RunRequest, RunResult

Admission = Literal["queued", "joined", "busy", "answered"]
Answer = Verdict | RunResult


def request_bytes(request: JudgeRequest | RunRequest) -> int:
    if isinstance(request, RunRequest):
        return len(request.code) + len(request.stdin) + sum(map(len, request.files.values()))
    size = len(request.response) + len(request.answer or "") + len(request.test_program or "")
    for test in request.tests or ():
        size += len(test.input) + len(test.output)
    return size


def answer(request: JudgeRequest | RunRequest, result: Outcome | RunResult) -> Answer:
    """The wire answer to `request`: a worker's outcome becomes a verdict, or a run's result."""
    if isinstance(result, RunResult):
        return result
    if isinstance(request, RunRequest):  # a bad request, a deadline or a dead worker: not the program's
        status = "bad_request" if result.status == "bad_request" else "sandbox_error"
        return RunResult(id=request.id, status=status, detail=result.detail[:4000])
    return result.verdict(request.id, request.truncated)


def _counted_status(result: Answer) -> str:
    return f"run_{result.status}" if isinstance(result, RunResult) else result.status


@dataclass
class _Entry:
    key: Hashable
    request: JudgeRequest | RunRequest
    size: int
    received: float = field(default_factory=time.monotonic)
    waiters: list[Any] = field(default_factory=list)


class Dispatcher:
    def __init__(self, config: JudgeConfig, pool: WorkerPool) -> None:
        self.config = config
        self.pool = pool
        self.counters = JudgeCounters()
        self._queue: deque[_Entry] = deque()
        self._queued_bytes = 0
        self._active: dict[Hashable, _Entry] = {}  # queued or running, by key
        self._ready: list[tuple[list[Any], Answer]] = []  # answered without a worker

    # ---- admission -----------------------------------------------------------------------
    def offer(self, key: Hashable, request: JudgeRequest | RunRequest, waiter: Any) -> Admission:
        """Take a request for judging. 'busy': the queue is full, nothing was kept."""
        entry = self._active.get(key)
        if entry is not None:
            entry.waiters.append(waiter)
            return "joined"
        early = self._check(request)
        if early is not None:
            result = answer(request, early)
            self.counters.record(_counted_status(result), 0.0)
            self._ready.append(([waiter], result))
            return "answered"
        size = request_bytes(request)
        queue_full = len(self._queue) >= self.config.queue_limit
        bytes_full = self._queue and self._queued_bytes + size > self.config.queue_limit_mb << 20
        if queue_full or bytes_full:
            self.counters.count("busy")
            return "busy"
        entry = _Entry(key, request, size, waiters=[waiter])
        self._active[key] = entry
        self._queue.append(entry)
        self._queued_bytes += size
        self._dispatch()
        return "queued"

    def _check(self, request: JudgeRequest | RunRequest) -> Outcome | None:
        """What can be answered at once, without a worker: requests that cannot be judged."""
        if request.kind in ("code", "run"):
            limits = resolve_limits(self.config.sandbox.limits, request.time_limit_s, request.memory_limit_mb)
            if isinstance(limits, str):
                return Outcome("bad_request", limits)
        return None

    def _timeout_s(self, request: JudgeRequest | RunRequest) -> float:
        if request.kind == "math":
            return self.config.math_timeout_s
        limits = resolve_limits(self.config.sandbox.limits, request.time_limit_s, request.memory_limit_mb)
        assert not isinstance(limits, str)
        per_test = limits.wall_s + ANSWER_MARGIN_S + 1.0
        setup = self.config.sandbox.limits.setup_timeout_s
        tests = 1 if isinstance(request, RunRequest) else len(request.tests or ())
        return setup + tests * per_test + self.config.code_grace_s

    def _dispatch(self) -> None:
        while self._queue:
            entry = self._queue[0]
            task = Task(entry.key, entry.request, self._timeout_s(entry.request))
            if not self.pool.submit(task):
                return
            self._queue.popleft()
            self._queued_bytes -= entry.size

    # ---- progress ------------------------------------------------------------------------
    def step(self, timeout_s: float) -> list[tuple[list[Any], Answer]]:
        """Run the pool for up to `timeout_s`; returns (waiters, answer) for every finished request."""
        finished = self._ready
        self._ready = []
        if self.pool.in_flight or not finished:
            for task, outcome in self.pool.poll(0.0 if finished else timeout_s):
                entry = self._active.get(task.key)
                if entry is not None:
                    finished.append(self._finish(entry, outcome))
        self._dispatch()
        return finished

    def _finish(self, entry: _Entry, outcome: Outcome | RunResult) -> tuple[list[Any], Answer]:
        self._active.pop(entry.key, None)
        result = answer(entry.request, outcome)
        self.counters.record(_counted_status(result), time.monotonic() - entry.received)
        return entry.waiters, result

    def abandon(self) -> list[list[Any]]:
        """Drop everything not finished; returns the waiters to tell."""
        waiters = [entry.waiters for entry in self._active.values()]
        self._active.clear()
        self._queue.clear()
        self._queued_bytes = 0
        return waiters

    # ---- reporting -----------------------------------------------------------------------
    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    @property
    def in_flight(self) -> int:
        return len(self._active) - len(self._queue)

    @property
    def idle(self) -> bool:
        return not self._active and not self._ready

    def stats(self) -> JudgeStats:
        return JudgeStats(
            counts=dict(self.counters.counts),
            latency_ms=self.counters.percentiles(),
            queue_depth=self.queue_depth,
            in_flight=self.in_flight,
            workers=self.pool.size,
            uptime_s=round(self.counters.uptime_s, 3),
        )
