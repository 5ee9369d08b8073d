"""The worker pool: a fixed number of worker processes, each judging one request at a time.

Every task has a deadline. A worker that passes it is killed with its whole process group (and
so with any jail it drives) and replaced; its task is answered `timeout`, and a task that was
waiting behind it goes back to the front of the queue. Workers are forked from a forkserver
that has math-verify loaded, so a replacement is ready in milliseconds.

Math tasks are short, so a worker busy with a math task may be handed a second one to start as
soon as it answers: it never sits idle waiting for the daemon's loop. Only a small one, though: a
busy worker reads nothing until its task ends, so the second task must fit in the pipe, or the
daemon's loop would block on the send and could no longer kill that worker at its deadline. Code
tasks are never queued behind another task on a worker, so a slow submission does not hold up a
free worker's work.

Not thread-safe: one thread (the daemon's loop, or the check command) owns the pool.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import socket
import struct
import time
from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from multiprocessing.reduction import ForkingPickler

import structlog

from judge.config import JudgeConfig
from judge.outcome import Outcome
from judge.worker import worker_main
from proto.judge import JudgeRequest
from proto.run import RunRequest, RunResult

log = structlog.get_logger("judge.pool")

START_TIMEOUT_S = 60.0
SPAWN_PAUSE_S = 0.5  # after a worker dies at once, before the next try (no fork loop)
# A task handed to a busy worker waits in the pipe, whose kernel buffer holds about 200 KiB (and
# nothing else then: the worker has read the message of its running task).
QUEUED_MAX_BYTES = 64 << 10
# A worker that reads nothing for this long fails the send (it is then replaced); longer than an
# idle worker can spend collecting old jails (killing one waits up to 5 s).
SEND_TIMEOUT_S = 10.0


@dataclass
class Task:
    key: Hashable
    request: JudgeRequest | RunRequest
    timeout_s: float
    deadline: float = 0.0


@dataclass
class _Worker:
    process: multiprocessing.process.BaseProcess
    connection: Connection
    ready: bool = False
    started_at: float = field(default_factory=time.monotonic)
    tasks: deque[Task] = field(default_factory=deque)  # the running task first
    done: int = 0

    @property
    def pid(self) -> int:
        assert self.process.pid is not None
        return self.process.pid


class WorkerPool:
    def __init__(self, config: JudgeConfig, *, cgroups: bool, size: int | None = None) -> None:
        self.config = config
        self.size = size or config.workers
        self.cgroups = cgroups
        self.recycled = 0  # workers killed at a deadline or replaced after dying
        self._context = multiprocessing.get_context("forkserver")
        self._context.set_forkserver_preload(["judge.worker"])
        self._workers: list[_Worker] = []
        self._waiting: deque[Task] = deque()  # taken from the worker that died, go first
        self._last_spawn_failure = 0.0
        for _ in range(self.size):
            self._spawn()

    # ---- workers -------------------------------------------------------------------------
    def _spawn(self) -> None:
        parent, child = self._context.Pipe(duplex=True)
        _bound_sends(parent, SEND_TIMEOUT_S)
        process = self._context.Process(
            target=worker_main,
            args=(child, self.config.sandbox, self.cgroups, self.config.worker_memory_mb),
            name="judge-worker",
            daemon=True,
        )
        process.start()
        child.close()
        self._workers.append(_Worker(process, parent))

    def _retire(self, worker: _Worker, reason: str) -> list[Task]:
        """Kill a worker and its process group; returns the tasks it held."""
        with contextlib.suppress(OSError):
            os.killpg(worker.pid, signal.SIGKILL)
        worker.process.kill()
        worker.process.join(5)
        worker.connection.close()
        self._workers.remove(worker)
        self.recycled += 1
        log.warning("worker_replaced", pid=worker.pid, reason=reason, tasks_done=worker.done)
        return list(worker.tasks)

    def wait_ready(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Block until every worker has started (raises RuntimeError after `timeout_s`)."""
        deadline = time.monotonic() + timeout_s
        while not all(worker.ready for worker in self._workers):
            if time.monotonic() > deadline:
                raise RuntimeError(f"judge workers did not start within {timeout_s} s")
            self.poll(0.05)

    # ---- tasks ---------------------------------------------------------------------------
    @property
    def in_flight(self) -> int:
        return sum(len(worker.tasks) for worker in self._workers) + len(self._waiting)

    def _slot_for(self, request: JudgeRequest | RunRequest) -> _Worker | None:
        idle = [worker for worker in self._workers if worker.ready and not worker.tasks]
        if idle:
            return idle[0]
        if request.kind == "math" and _fits_in_pipe(request):
            for worker in self._workers:
                if worker.ready and len(worker.tasks) == 1 and worker.tasks[0].request.kind == "math":
                    return worker
        return None

    def submit(self, task: Task) -> bool:
        """Hand `task` to a worker now; False if none can take it (keep it queued)."""
        if self._waiting:
            return False  # tasks given back by a dead worker go first
        return self._assign(task)

    def _assign(self, task: Task) -> bool:
        worker = self._slot_for(task.request)
        if worker is None:
            return False
        try:
            worker.connection.send(("judge", id(task), task.request))
        except (OSError, ValueError) as exc:
            self._waiting.extendleft(reversed([*self._retire(worker, f"send failed: {exc}"), task]))
            self._spawn()
            return False
        if not worker.tasks:
            task.deadline = time.monotonic() + task.timeout_s
        worker.tasks.append(task)
        return True

    def poll(self, timeout_s: float) -> list[tuple[Task, Outcome | RunResult]]:
        """Outcomes that arrived within `timeout_s`, and those of tasks that passed their deadline."""
        finished: list[tuple[Task, Outcome | RunResult]] = []
        self._requeue()
        now = time.monotonic()
        for worker in list(self._workers):
            if worker.tasks and now > worker.tasks[0].deadline:
                running, *behind = self._retire(worker, "deadline")
                finished.append((running, _deadline_outcome(running)))
                self._waiting.extendleft(reversed(behind))
                self._spawn()
        if finished:
            return finished
        deadlines = [worker.tasks[0].deadline for worker in self._workers if worker.tasks]
        if deadlines:
            timeout_s = max(0.0, min(timeout_s, min(deadlines) - now))
        by_connection = {worker.connection: worker for worker in self._workers}
        by_sentinel = {worker.process.sentinel: worker for worker in self._workers}
        for ready in wait([*by_connection, *by_sentinel], timeout_s):
            worker = by_connection.get(ready) or by_sentinel[ready]  # type: ignore[index, call-overload]
            if worker not in self._workers:
                continue
            finished.extend(self._read(worker))
        self._requeue()
        return finished

    def _read(self, worker: _Worker) -> list[tuple[Task, Outcome | RunResult]]:
        finished = []
        while True:
            try:
                if not worker.connection.poll():
                    break
                message = worker.connection.recv()
            except (EOFError, OSError):
                finished.extend(self._died(worker))
                return finished
            if message[0] == "ready":
                worker.ready = True
                continue
            _, _task_key, result, _seconds = message
            task = worker.tasks.popleft()
            worker.done += 1
            finished.append((task, result))
            if worker.tasks:
                worker.tasks[0].deadline = time.monotonic() + worker.tasks[0].timeout_s
        if not worker.process.is_alive():
            finished.extend(self._died(worker))
        elif worker.done >= self.config.worker_max_tasks and not worker.tasks:
            self._retire(worker, "task quota reached")
            self._spawn()
        return finished

    def _died(self, worker: _Worker) -> list[tuple[Task, Outcome | RunResult]]:
        code = worker.process.exitcode
        tasks = self._retire(worker, f"exited with status {code}")
        finished = []
        if tasks:
            running, *behind = tasks
            finished.append((running, _crash_outcome(running, code)))
            self._waiting.extendleft(reversed(behind))
        now = time.monotonic()
        if now - worker.started_at < 1.0 and now - self._last_spawn_failure < 5.0:
            time.sleep(SPAWN_PAUSE_S)  # dying again at once: do not spin forking
        self._last_spawn_failure = now
        self._spawn()
        return finished

    def _requeue(self) -> None:
        while self._waiting and self._assign(self._waiting[0]):
            self._waiting.popleft()

    # ---- end -----------------------------------------------------------------------------
    def abandon(self) -> list[Task]:
        """Every task not finished yet (for answering them when shutting down)."""
        tasks = list(self._waiting)
        for worker in self._workers:
            tasks.extend(worker.tasks)
        return tasks

    def close(self) -> None:
        for worker in list(self._workers):
            with contextlib.suppress(OSError, ValueError):
                worker.connection.send(("stop",))
        deadline = time.monotonic() + 2.0
        for worker in list(self._workers):
            worker.process.join(max(0.0, deadline - time.monotonic()))
            with contextlib.suppress(OSError):
                os.killpg(worker.pid, signal.SIGKILL)
            worker.process.join(1)
            worker.connection.close()
        self._workers.clear()


def _fits_in_pipe(request: JudgeRequest) -> bool:
    """Whether the message carrying `request` to a worker is at most QUEUED_MAX_BYTES long."""
    if len(request.response) + len(request.answer or "") > QUEUED_MAX_BYTES:
        return False  # every character takes at least a byte: no need to pickle it to know
    return len(ForkingPickler.dumps(("judge", 0, request))) <= QUEUED_MAX_BYTES


def _bound_sends(connection: Connection, timeout_s: float) -> None:
    """Make a send that makes no progress for `timeout_s` fail (EAGAIN) rather than block forever.

    SO_SNDTIMEO, not a socket timeout: the descriptor must stay blocking, or a send could stop
    halfway through a message.
    """
    seconds = int(timeout_s)
    timeval = struct.pack("ll", seconds, int((timeout_s - seconds) * 1e6))
    with socket.socket(fileno=os.dup(connection.fileno())) as sock:  # the same socket, closed alone
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)


def _deadline_outcome(task: Task) -> Outcome:
    if task.request.kind == "math":
        return Outcome("timeout", f"math-verify took longer than {task.timeout_s:g} s; worker replaced")
    return Outcome("sandbox_error", f"judging took longer than {task.timeout_s:g} s; worker replaced")


def _crash_outcome(task: Task, code: int | None) -> Outcome:
    killed = code is not None and code < 0
    how = f"killed by {signal.Signals(-code).name}" if killed else f"exit status {code}"  # type: ignore[operator]
    if task.request.kind == "math":
        return Outcome("timeout", f"the math worker died ({how}); the worker was replaced")
    return Outcome("sandbox_error", f"the judge worker died ({how}); the worker was replaced")
