"""The test runner that lives inside the jail: one per submission, one fresh process per test.

Runs under the jail's own Python with the standard library only (it imports nothing from this
project). The judge starts it once per submission, so the cost of building the jail and of
starting Python is paid once; every test then runs in a child forked from this process, with
its own limits, its own clock and its own output pipes, and everything the test started is killed
before the next one begins.

Frames on the control pipe (stdin from the judge, stdout to the judge) are an 8-byte
little-endian length followed by that many bytes:
    judge -> runner: setup (JSON), source code, then one frame per test input; EOF ends it.
    runner -> judge: compile result (JSON), then per test a header (JSON) and the stdout bytes.
The runner reports what happened; the judge alone compares outputs with the expected ones, which
never enter the jail.
One file, over 400 lines, on purpose: the jail mounts it and runs it alone, so it cannot import a
second module of its own.

Inside the jail the runner is PID 1 of the jail's PID namespace: signals sent by the programs it
runs cannot kill it, and `kill(-1, SIGKILL)` ends every other process in the jail. Without a jail
(`sandbox.unsafe_no_sandbox=true`) it falls back to process groups, which a hostile program can escape.
"""

import base64
import contextlib
import json
import math
import os
import resource
import selectors
import signal
import stat
import struct
import sys
import threading
import time
import traceback
import types

HEADER = struct.Struct("<Q")
CHUNK = 1 << 16
STDERR_KEPT = 2048  # bytes of a test's stderr kept for the verdict's detail (the tail)
REPORT_LIMIT = 1 << 16  # bytes of the child's report kept, beyond the call-based return value
DRAIN_S = 1.0  # after a test's process exits, how long its pipes may stay open
SOURCE_NAME = "solution.py"
LIBC = None  # loaded without a jail only, for prctl

# Names every program starts with, as in LiveCodeBench's harness: call-based solutions use
# `List`, `defaultdict`, `heapq` and friends without importing them. The modules are imported
# once here, so in a test child the prelude only copies names.
PRELUDE = """\
from string import *
from re import *
from datetime import *
from collections import *
from heapq import *
from bisect import *
from copy import *
from math import *
from random import *
from statistics import *
from itertools import *
from functools import *
from operator import *
from io import *
from sys import *
from json import *
from builtins import *
from typing import *
import string
import re
import datetime
import collections
import heapq
import bisect
import copy
import math
import random
import statistics
import itertools
import functools
import operator
import io
import sys
import json
sys.setrecursionlimit(50000)
"""


def read_exact(fd, size):
    parts = []
    while size:
        chunk = os.read(fd, min(size, 1 << 20))
        if not chunk:
            return None
        parts.append(chunk)
        size -= len(chunk)
    return b"".join(parts)


def read_frame(fd):
    head = read_exact(fd, HEADER.size)
    if head is None:
        return None
    (size,) = HEADER.unpack(head)
    data = read_exact(fd, size)
    if data is None:
        raise EOFError("control pipe closed inside a frame")
    return data


def read_frame_into(fd, target_fd):
    """Copy one frame from `fd` into `target_fd` without holding it all in memory; False at EOF."""
    head = read_exact(fd, HEADER.size)
    if head is None:
        return False
    (size,) = HEADER.unpack(head)
    while size:
        chunk = os.read(fd, min(size, 1 << 20))
        if not chunk:
            raise EOFError("control pipe closed inside a frame")
        write_all(target_fd, chunk)
        size -= len(chunk)
    return True


def write_all(fd, data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def write_frame(fd, data):
    write_all(fd, HEADER.pack(len(data)))
    write_all(fd, data)


def write_json(fd, value):
    write_frame(fd, json.dumps(value).encode())


def process_cpu_s(pid):
    """CPU seconds used so far by all threads of process `pid` (its CPU-time clock)."""
    try:
        return time.clock_gettime(((~pid) << 3) | 2)  # MAKE_PROCESS_CPUCLOCK(pid, CPUCLOCK_SCHED)
    except OSError:
        return 0.0


class Runner:
    def __init__(self, setup, control_in, control_out):
        self.setup = setup
        self.control_in = control_in
        self.control_out = control_out
        self.pid1 = os.getpid() == 1
        self.call_mode = setup["mode"] == "call"
        self.assert_mode = setup["mode"] == "assert"
        self.prelude = compile(PRELUDE, "<prelude>", "exec")
        self.prelude_names = {"__name__": "__prelude__"}
        exec(self.prelude, self.prelude_names)  # import the modules now, once
        self.code = None
        self.test_code = None

    # ---- in the test process -------------------------------------------------------------
    def child(self, stdin_fd, out_w, err_w, report_w):
        """Become the test process; never returns."""
        code = 1
        try:
            if LIBC is not None:
                LIBC.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG: die with this runner
            os.setsid()
            os.dup2(stdin_fd, 0)
            os.dup2(out_w, 1)
            os.dup2(err_w, 2)
            os.dup2(report_w, 3)
            os.closerange(4, resource.getrlimit(resource.RLIMIT_NOFILE)[0])
            self.limit_child()
            signal.signal(signal.SIGINT, signal.default_int_handler)
            code = self.run_program()
        finally:
            os._exit(code)

    def limit_child(self):
        setup = self.setup
        memory = setup["memory_bytes"]
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
        cpu = math.ceil(setup["cpu_s"]) + 1  # a backstop: the runner's clock is exact
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
        resource.setrlimit(resource.RLIMIT_FSIZE, (setup["file_bytes"], setup["file_bytes"]))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    def run_program(self):
        import builtins
        import io

        sys.stdin = sys.__stdin__ = io.TextIOWrapper(
            io.BufferedReader(io.FileIO(0, "r", closefd=False)),
            encoding="utf-8",
            errors="surrogateescape",
            newline="\n",  # as Python's own stdin on POSIX: no newline translation
        )
        sys.stdout = sys.__stdout__ = io.TextIOWrapper(
            io.BufferedWriter(io.FileIO(1, "w", closefd=False)),
            encoding="utf-8",
            errors="surrogateescape",
            newline="\n",
        )
        sys.stderr = sys.__stderr__ = io.TextIOWrapper(
            io.FileIO(2, "w", closefd=False),
            encoding="utf-8",
            errors="backslashreplace",
            newline="\n",
            write_through=True,
        )
        sys.argv = [SOURCE_NAME]
        main = types.ModuleType("__main__")
        main.__file__ = SOURCE_NAME
        main.__builtins__ = builtins
        sys.modules["__main__"] = main
        namespace = main.__dict__
        report = {"outcome": "ok"}
        code = 0
        try:
            exec(self.prelude, namespace)
            if self.call_mode:
                arguments = [json.loads(line) for line in sys.stdin.read().splitlines() if line.strip()]
            exec(self.code, namespace)
            if self.call_mode:
                report = self.call(namespace, arguments)
            elif self.assert_mode:
                report = self.check(namespace)
        except SystemExit as stop:
            code, report = self.exit_status(stop.code)
        except BaseException as exc:  # the program's own failure, reported like Python would
            report = {"outcome": "exception", "type": type(exc).__name__, "message": str(exc)[:300]}
            code = 1
            with contextlib.suppress(BaseException):
                # Start the traceback at the program's own frames, below this runner's.
                traceback.print_exception(type(exc), exc, exc.__traceback__.tb_next)
        with contextlib.suppress(BaseException):
            threading._shutdown()  # wait for non-daemon threads, as interpreter exit does
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(BaseException):
                stream.flush()
        with contextlib.suppress(BaseException):
            write_all(3, json.dumps(report).encode())
        return code

    def own_function(self, namespace, name):
        """`name` as the program defined it at top level (not a name the prelude brought in)."""
        value = namespace.get(name)
        if callable(value) and not isinstance(value, type) and value is not self.prelude_names.get(name):
            return value
        return None

    def call(self, namespace, arguments):
        """A method of `class Solution` (LeetCode style), else a top-level function (Codewars style)."""
        name = self.setup["fn_name"]
        solution = namespace.get("Solution")
        method = getattr(solution(), name, None) if isinstance(solution, type) else None
        if not callable(method):
            method = self.own_function(namespace, name)
        if method is None:
            where = (
                "Solution has no method"
                if isinstance(solution, type)
                else "the program defines no class Solution or function"
            )
            return {"outcome": "no_method", "message": f"{where} {name!r}"}
        value = method(*arguments)
        try:
            return {"outcome": "ok", "value": json.dumps(value)}
        except (TypeError, ValueError) as exc:
            return {"outcome": "not_json", "message": f"{type(value).__name__}: {exc}"[:300]}

    def check(self, namespace):
        """Assertion-style tests (HumanEval, MBPP): the test program, then `check(entry_point)`."""
        exec(self.test_code, namespace)  # plain asserts (MBPP) fail here
        check = namespace.get("check")
        if callable(check):
            name = self.setup["fn_name"]
            target = self.own_function(namespace, name) if name else None
            if target is None:
                return {"outcome": "no_method", "message": f"the program defines no function {name!r}"}
            check(target)
        return {"outcome": "checked"}  # only here: an exit or os._exit on the way is no pass

    @staticmethod
    def exit_status(value):
        if value is None:
            return 0, {"outcome": "ok"}
        if isinstance(value, int):
            return value & 0xFF, {"outcome": "exit", "code": value}
        with contextlib.suppress(BaseException):
            print(value, file=sys.stderr)
        return 1, {"outcome": "exit", "code": 1}

    # ---- in the runner -------------------------------------------------------------------
    def kill_test(self, pid):
        """Kill the test process and everything it started."""
        if self.pid1:
            with contextlib.suppress(ProcessLookupError):
                os.kill(-1, signal.SIGKILL)  # as PID 1: every other process in the jail
            return
        for target in (lambda: os.killpg(pid, signal.SIGKILL), lambda: os.kill(pid, signal.SIGKILL)):
            with contextlib.suppress(OSError):
                target()
        self.kill_orphans()

    def kill_orphans(self):
        """Without a jail: kill processes re-parented to this runner (it is their subreaper)."""
        me = str(os.getpid())
        for _ in range(50):
            found = False
            for entry in os.listdir("/proc"):
                if not entry.isdigit():
                    continue
                try:
                    with open(f"/proc/{entry}/stat", "rb") as stat:
                        ppid = stat.read().rsplit(b")", 1)[1].split()[1].decode()
                except (OSError, IndexError):
                    continue
                if ppid == me:
                    found = True
                    with contextlib.suppress(OSError):
                        os.kill(int(entry), signal.SIGKILL)
            self.reap()
            if not found:
                return

    def reap(self):
        """Collect every exited child; as PID 1, first make sure nothing else is left alive."""
        deadline = time.monotonic() + DRAIN_S
        while True:
            if self.pid1:
                self.kill_test(0)  # again: a process forking while the last kill went out
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                if not self.pid1 or time.monotonic() > deadline:
                    return
                time.sleep(0.001)

    def run_test(self):
        """Run the program on the next test input; False when the judge has no more tests."""
        stdin_fd = os.memfd_create("stdin", os.MFD_CLOEXEC)
        try:
            if not read_frame_into(self.control_in, stdin_fd):
                return False
            os.lseek(stdin_fd, 0, os.SEEK_SET)
            out_r, out_w = os.pipe()
            err_r, err_w = os.pipe()
            report_r, report_w = os.pipe()
            start = time.monotonic()
            pid = os.fork()
            if pid == 0:
                self.child(stdin_fd, out_w, err_w, report_w)
            for fd in (out_w, err_w, report_w):
                os.close(fd)
        finally:
            os.close(stdin_fd)
        header, stdout = self.watch(pid, start, out_r, err_r, report_r)
        if self.setup.get("fetch_files"):
            header["files"] = self.fetch_files()
        write_json(self.control_out, header)
        write_frame(self.control_out, stdout)
        return True

    def watch(self, pid, start, out_r, err_r, report_r):
        setup = self.setup
        cpu_limit = setup["cpu_s"]
        wall_deadline = start + setup["wall_s"]
        output_limit = setup["output_bytes"]
        cpus = max(1, len(os.sched_getaffinity(0)))
        buffers = {out_r: bytearray(), err_r: bytearray(), report_r: bytearray()}
        limits = {out_r: output_limit, err_r: output_limit, report_r: output_limit + REPORT_LIMIT}
        seen = dict.fromkeys(buffers, 0)
        pidfd = os.pidfd_open(pid)
        selector = selectors.DefaultSelector()
        for fd in (*buffers, pidfd):
            selector.register(fd, selectors.EVENT_READ)
        killed = None
        status = None
        usage = None
        drain_deadline = None
        while True:
            now = time.monotonic()
            if status is None:
                cpu = process_cpu_s(pid)
                if killed is None and cpu >= cpu_limit:
                    killed = "cpu"
                elif killed is None and now >= wall_deadline:
                    killed = "wall"
                if killed is not None and drain_deadline is None:
                    self.kill_test(pid)
                    drain_deadline = now + DRAIN_S
                # CPU time grows at most `cpus` times as fast as the wall clock.
                timeout = min(wall_deadline - now, (cpu_limit - cpu) / cpus)
                timeout = max(timeout, 0.002)
                if drain_deadline is not None:
                    timeout = min(timeout, 0.05)
            else:
                if len(selector.get_map()) == 0:
                    break
                timeout = drain_deadline - now
                if timeout <= 0:
                    break
            for key, _ in selector.select(timeout):
                fd = key.fd
                if fd == pidfd:
                    _, status, usage = os.wait4(pid, 0)
                    selector.unregister(pidfd)
                    os.close(pidfd)
                    self.kill_test(pid)  # whatever the program left behind
                    self.reap()
                    drain_deadline = time.monotonic() + DRAIN_S
                    continue
                chunk = os.read(fd, CHUNK)
                if not chunk:
                    selector.unregister(fd)
                    continue
                seen[fd] += len(chunk)
                buffer = buffers[fd]
                if fd == err_r:
                    buffer += chunk
                    del buffer[: -setup.get("stderr_bytes", STDERR_KEPT)]
                elif len(buffer) < limits[fd]:
                    buffer += chunk[: limits[fd] - len(buffer)]
                if seen[fd] > limits[fd] and killed is None:
                    killed = "stderr" if fd == err_r else "output"
                    self.kill_test(pid)
                    drain_deadline = time.monotonic() + DRAIN_S
        selector.close()
        for fd in buffers:
            os.close(fd)
        if status is None:  # the pipes outlived the drain: make sure the process is gone
            self.kill_test(pid)
            _, status, usage = os.wait4(pid, 0)
        self.reap()
        wall = time.monotonic() - start
        cpu = usage.ru_utime + usage.ru_stime
        if killed is None and cpu > cpu_limit:
            killed = "cpu"
        report = None
        if buffers[report_r]:
            try:
                report = json.loads(bytes(buffers[report_r]).decode("utf-8", "replace"))
            except ValueError:
                report = {"outcome": "garbled"}
        header = {
            "exit_code": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
            "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
            "cpu_s": round(cpu, 4),
            "wall_s": round(wall, 4),
            "max_rss_kb": usage.ru_maxrss,
            "killed": killed,
            "stdout_bytes": seen[out_r],
            "stderr": bytes(buffers[err_r]).decode("utf-8", "replace"),
            "report": report if isinstance(report, dict) else {"outcome": "garbled"},
        }
        return header, bytes(buffers[out_r])

    def write_files(self):
        """The request's files, into the working directory (the jail's /tmp) before any test."""
        for name, data in (self.setup.get("files") or {}).items():
            try:
                directory = os.path.dirname(name)
                if directory:
                    os.makedirs(directory, exist_ok=True)
                with open(name, "wb") as file:
                    file.write(base64.b64decode(data))
            except (OSError, ValueError) as exc:
                return {"ok": False, "status": "bad_files", "detail": f"{name}: {exc}"[:500]}
        return None

    def fetch_files(self):
        """The files asked for that exist after the run, each cut at the output limit (base64).

        Regular files only, never through a link: a FIFO left by the program would block here.
        """
        found = {}
        for name in self.setup["fetch_files"]:
            try:
                fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
            except OSError:
                continue
            try:
                if stat.S_ISREG(os.fstat(fd).st_mode):
                    data = os.read(fd, self.setup["output_bytes"])
                    found[name] = base64.b64encode(data).decode()
            except OSError:
                pass
            finally:
                os.close(fd)
        return found

    def compile_source(self, source):
        if self.assert_mode:
            try:  # the judge's own test program: a failure here is the request's, not the response's
                self.test_code = compile(
                    self.setup["test_program"], "test_program.py", "exec", dont_inherit=True
                )
            except (SyntaxError, ValueError) as exc:
                return {
                    "ok": False,
                    "status": "bad_test_program",
                    "detail": f"{type(exc).__name__}: {exc}"[:500],
                }
        try:
            self.code = compile(source, SOURCE_NAME, "exec", dont_inherit=True)
        except SyntaxError as exc:
            line = (exc.text or "").strip()[:200]
            detail = f"{type(exc).__name__}: {exc.msg} (line {exc.lineno}" + (f": {line!r})" if line else ")")
            return {"ok": False, "status": "syntax_error", "detail": detail}
        except (ValueError, RecursionError, MemoryError, OverflowError) as exc:
            return {"ok": False, "status": "syntax_error", "detail": f"{type(exc).__name__}: {exc}"[:500]}
        return {"ok": True}


def main():
    # The control pipe moves to private descriptors; test processes close them.
    control_in = os.dup(0)
    control_out = os.dup(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # only handled signals could reach PID 1
    if os.getpid() != 1:
        global LIBC
        try:
            import ctypes

            LIBC = ctypes.CDLL(None)
            LIBC.prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER: orphans come back here
        except (OSError, AttributeError):
            LIBC = None
    setup_frame = read_frame(control_in)
    if setup_frame is None:
        return 0
    runner = Runner(json.loads(setup_frame), control_in, control_out)
    source = read_frame(control_in)
    if source is None:
        return 0
    result = runner.write_files() or runner.compile_source(source)
    write_json(control_out, result)
    if not result["ok"]:
        return 0
    while runner.run_test():
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
