"""A judge daemon for tests, and the processes it started.

`judge_daemon(address, **fields)` starts `python -m judge serve` and waits until it serves; the
judge tests' `daemon` fixture (tests/judge/conftest.py) and the generator's service tests both
use it. Like every component a test starts (`LiveProcess`: generators too), the daemon leads a
session of its own, so that stopping it also ends its workers and jails. Checks of what a daemon
leaves behind look only below the daemon under test: two test runs on one machine must not see
each other's processes.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from launch.process_group import stop_process_group

ROOT = Path(__file__).resolve().parents[1]
PORT_ATTEMPTS = 5


def judge_serve_command(address: str, **fields: object) -> list[str]:
    """`python -m judge serve bind=ADDRESS key=value ...`.

    Dotted fields go in as a dict, e.g. `**{"sandbox.limits.time_limit_s": 2}`.
    """
    overrides = [f"{key}={value}" for key, value in fields.items()]
    return [sys.executable, "-m", "judge", "serve", f"bind={address}", *overrides]


class LiveProcess:
    """A child process whose stderr is collected line by line, leading a session of its own."""

    def __init__(self, command: list[str], env: dict[str, str] | None = None) -> None:
        self.command = command
        # A session of its own, so that stop() also ends what it started (a judge's workers and
        # jails, a generator's engine processes): left behind, they take the cores the next
        # tests need.
        self.process = subprocess.Popen(
            command,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            start_new_session=True,
        )
        self.log: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.log.append(line)

    def wait_for_line(self, text: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not any(text in line for line in self.log):
            if self.process.poll() is not None:
                time.sleep(0.2)  # let the reader catch the last lines
                code = self.process.returncode
                raise RuntimeError(f"{self.command[2:4]} exited with {code}:\n{self.tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.command[2:4]}: no {text!r} within {timeout_s} s:\n{self.tail()}")
            time.sleep(0.05)

    def tail(self, lines: int = 40) -> str:
        return "".join(self.log[-lines:])

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM to its process group, SIGKILL after `timeout_s`, then SIGKILL to whatever of its
        session is left; returns its exit code."""
        code = stop_process_group(self.process, timeout_s)
        self._reader.join(5)
        return code


class LiveDaemon(LiveProcess):
    """`python -m judge serve` at `address`."""

    def __init__(self, address: str, **fields: object) -> None:
        super().__init__(judge_serve_command(address, **fields))
        self.address = address

    def wait_serving(self, timeout_s: float = 60.0) -> LiveDaemon:
        self.wait_for_line("judge_serving", timeout_s)
        return self


def judge_daemon(address: str, *, timeout_s: float = 60.0, **fields: object) -> LiveDaemon:
    """A judge daemon serving at `address`, with the JudgeConfig `fields` given.

    Port 0 (`tcp://HOST:0`) stands for a free port of HOST, picked here: another process may take
    it before the daemon binds it, so a daemon that cannot bind is started again on another one.
    """
    scheme, _, rest = address.partition("://")
    host, _, port = rest.rpartition(":")
    free_port_wanted = scheme == "tcp" and port == "0"
    for _ in range(PORT_ATTEMPTS if free_port_wanted else 1):
        live = LiveDaemon(f"tcp://{host}:{free_port(host)}" if free_port_wanted else address, **fields)
        try:
            return live.wait_serving(timeout_s)
        except RuntimeError:
            live.stop()
            if not (free_port_wanted and "cannot bind" in live.tail()):
                raise
    raise RuntimeError(f"judge daemon: no free port of {host} in {PORT_ATTEMPTS} attempts")


def free_port(host: str = "127.0.0.1") -> int:
    """A port of `host` that was free a moment ago."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


# ---- the processes below a daemon --------------------------------------------------------


def _running(pid: int) -> tuple[bool, int]:
    """Whether `pid` runs (exists, not a zombie), and its parent's pid."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            state, ppid = stat.read().rsplit(b")", 1)[1].split()[:2]
    except (OSError, ValueError):
        return False, 0
    return state != b"Z", int(ppid)


def descendants(pid: int) -> list[int]:
    """Running processes below `pid`: a daemon's forkserver, workers, nsjails and jailed programs.

    A jailed program that starts a session of its own stays below: orphans inside a jail are
    adopted by the jail's first process, not by the host's init.
    """
    parents = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        alive, ppid = _running(int(entry))
        if alive:
            parents[int(entry)] = ppid
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        children = [child for child, ppid in parents.items() if ppid == parent]
        found += children
        frontier += children
    return found


def still_running(pids: list[int], timeout_s: float) -> list[int]:
    """Those of `pids` still running after up to `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        left = [pid for pid in pids if _running(pid)[0]]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)
