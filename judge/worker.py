"""A judge worker process: takes one request at a time from the pool and answers with its outcome.

Workers are where the slow and dangerous parts run (math-verify, driving a jail), so that the
daemon's loop only moves messages. The pool kills a worker that passes its deadline and starts a
new one; a worker therefore holds no state worth keeping.
"""

from __future__ import annotations

import os
import resource
import time
from multiprocessing.connection import Connection

from judge.code_check import judge_code
from judge.code_run import run_code
from judge.config import SandboxConfig
from judge.jail import reap_jails
from judge.math_check import judge_math
from judge.outcome import Outcome
from judge.sandbox import Sandbox
from proto.judge import JudgeRequest
from proto.logs import configure_logging
from proto.run import RunRequest, RunResult


def judge(request: JudgeRequest, sandbox: Sandbox) -> Outcome:
    """Judge one request in this process (what a worker does; also usable directly)."""
    if request.kind == "math":
        assert request.answer is not None
        return judge_math(request.response, request.answer, request.opened_think)
    return judge_code(request, sandbox)


def _guarded(request: JudgeRequest | RunRequest, sandbox: Sandbox) -> Outcome | RunResult:
    try:
        if isinstance(request, RunRequest):
            return run_code(request, sandbox)
        return judge(request, sandbox)
    except MemoryError:
        if request.kind == "math":
            return Outcome("timeout", f"math-verify ran out of memory on {request.id!r}")
        return Outcome("sandbox_error", "the judge worker ran out of memory")
    except RecursionError:
        if request.kind == "math":
            return Outcome("timeout", "math-verify recursed too deeply on this answer")
        return Outcome("sandbox_error", "the judge worker recursed too deeply")
    except Exception as exc:  # a bug in the judge: not a verdict on the response
        return Outcome("sandbox_error", f"internal judge error: {type(exc).__name__}: {exc}"[:500])


def worker_main(connection: Connection, sandbox_config: SandboxConfig, cgroups: bool, memory_mb: int) -> None:
    """Entry point of a worker process (started by `judge.pool.WorkerPool`)."""
    os.setpgid(0, 0)  # the pool kills this group: the worker and any nsjail it started
    configure_logging("judge.worker")
    # Soft limit only: nsjail, started from here, must stay free to set its own limits.
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (memory_mb << 20, hard))
    sandbox = Sandbox(sandbox_config)
    sandbox.cgroups = cgroups  # the daemon prepared them (or found it could not) at start
    connection.send(("ready", os.getpid()))
    while True:
        try:
            while not connection.poll(1.0):
                reap_jails()  # while idle, collect the jails of earlier submissions
            message = connection.recv()
        except (EOFError, OSError):
            break
        if message[0] == "stop":
            break
        _, task_id, request = message
        started = time.monotonic()
        result = _guarded(request, sandbox)
        connection.send(("done", task_id, result, time.monotonic() - started))
        reap_jails()
    reap_jails(wait_s=5.0)
