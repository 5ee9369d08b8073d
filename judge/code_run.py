"""Runs: a program run once in the jail on the request's stdin, its output handed back as is.

The same jail, runner and limits as a code verdict (`judge/code_check.py`), with one test whose
expected output nobody knows: the caller reads stdout, stderr and the exit status itself. Files
of the request are written to the jail's working directory before the run; the ones asked for
are read back after it.
"""

from __future__ import annotations

import base64
import signal
import time

from judge.code_check import ANSWER_MARGIN_S
from judge.jail import Jail, JailBroken, set_aside
from judge.sandbox import Sandbox, resolve_limits
from proto.run import RunRequest, RunResult

STDERR_BYTES = 1 << 16  # the tail of stderr kept: a whole traceback, not only its last lines


def run_code(request: RunRequest, sandbox: Sandbox) -> RunResult:
    limits = resolve_limits(sandbox.config.limits, request.time_limit_s, request.memory_limit_mb)
    if isinstance(limits, str):
        return RunResult(id=request.id, status="bad_request", detail=limits)
    setup = {
        **limits.setup("stdio", None),
        "stderr_bytes": STDERR_BYTES,
        "files": {name: base64.b64encode(data).decode() for name, data in request.files.items()},
        "fetch_files": request.fetch_files,
    }
    try:
        jail = Jail(sandbox.start(limits, 1))
    except OSError as exc:
        return RunResult(id=request.id, status="sandbox_error", detail=f"cannot start the jail: {exc}")
    started = False
    try:
        deadline = time.monotonic() + sandbox.config.limits.setup_timeout_s
        jail.send_json(setup, deadline)
        jail.send(request.code.encode("utf-8", "surrogateescape"), deadline)
        compiled = jail.recv_json(deadline)
        if not compiled.get("ok"):
            status = "bad_request" if compiled.get("status") == "bad_files" else "syntax_error"
            return RunResult(id=request.id, status=status, detail=str(compiled.get("detail", "")))
        started = True
        jail.send(request.stdin.encode("utf-8", "surrogateescape"), deadline)
        deadline = time.monotonic() + limits.wall_s + ANSWER_MARGIN_S
        header = jail.recv_json(deadline)
        stdout = jail.recv(deadline)
    except JailBroken as exc:
        jail.kill()
        if not started:
            detail = f"the jail failed during start-up: {exc} ({jail.diagnostics()})"
            return RunResult(id=request.id, status="sandbox_error", detail=detail)
        status = "time_limit" if exc.timed_out else "finished"
        detail = f"the jail stopped answering ({exc}; {jail.diagnostics()})"
        return RunResult(id=request.id, status=status, signal=int(signal.SIGKILL), detail=detail)
    finally:
        set_aside(jail)
    killed = header.get("killed")
    status = "time_limit" if killed in ("cpu", "wall") else "output_limit" if killed else "finished"
    if header.get("signal") == signal.SIGXCPU:
        status = "time_limit"
    detail = ""
    if killed:
        detail = f"killed: {killed} limit (CPU {limits.cpu_s:g} s, wall {limits.wall_s:g} s)"
    return RunResult(
        id=request.id,
        status=status,
        exit_code=header.get("exit_code"),
        signal=header.get("signal"),
        cpu_s=float(header.get("cpu_s", 0.0)),
        wall_s=float(header.get("wall_s", 0.0)),
        stdout=stdout.decode("utf-8", "replace"),
        stderr=str(header.get("stderr", "")),
        files={name: base64.b64decode(data) for name, data in (header.get("files") or {}).items()},
        detail=detail,
    )
