"""Fixtures for the judge's tests: a real sandbox, a live daemon, and a look at the host's processes."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from judge.config import SandboxConfig
from judge.preflight import ready_sandbox
from judge.sandbox import Sandbox
from proto.judge import JudgeRequest, TestCase

ROOT = Path(__file__).resolve().parents[2]
JAIL_UID = 65534


def code_request(
    source: str, tests: list[tuple[str, str]], *, ident: str = "c", fenced: bool = True, **fields: object
) -> JudgeRequest:
    response = f"<think>plan</think>\n```python\n{source}\n```\n" if fenced else source
    cases = [TestCase(input=i, output=o) for i, o in tests]
    return JudgeRequest(id=ident, kind="code", response=response, tests=cases, **fields)  # type: ignore[arg-type]


def math_request(response: str, answer: str, ident: str = "m") -> JudgeRequest:
    return JudgeRequest(id=ident, kind="math", response=response, answer=answer)


def processes_of(uid: int) -> list[int]:
    """Pids of the host's processes running as `uid` (the jail's uid maps to itself outside)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as status:
                for line in status:
                    if line.startswith("Uid:"):
                        if int(line.split()[1]) == uid:
                            pids.append(int(entry))
                        break
        except (OSError, ValueError):
            continue
    return pids


def wait_until_no_jailed_processes(timeout_s: float = 5.0, keep: tuple[int, ...] = ()) -> list[int]:
    """Poll until no process runs as the jail's uid (other than `keep`); returns what is left."""
    deadline = time.monotonic() + timeout_s
    while True:
        left = [pid for pid in processes_of(JAIL_UID) if pid not in keep]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


@pytest.fixture(scope="session")
def sandbox() -> Sandbox:
    """The real nsjail sandbox, after the same start-up check the daemon runs."""
    return ready_sandbox(SandboxConfig())


class LiveDaemon:
    """`python -m judge serve` in a child process, its log collected from stderr."""

    def __init__(self, address: str, *args: str) -> None:
        self.address = address
        self.command = [sys.executable, "-m", "judge", "serve", "--bind", address, *args]
        self.process = subprocess.Popen(
            self.command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        self.log: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.log.append(line)

    def wait_serving(self, timeout_s: float = 60.0) -> LiveDaemon:
        deadline = time.monotonic() + timeout_s
        while not any("judge_serving" in line for line in self.log):
            if self.process.poll() is not None:
                time.sleep(0.2)
                raise RuntimeError(f"judge daemon exited with {self.process.returncode}: {''.join(self.log)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"judge daemon did not start: {''.join(self.log)}")
            time.sleep(0.05)
        return self

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self._reader.join(5)
        return self.process.returncode


@pytest.fixture(scope="session")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveDaemon]:
    """One daemon shared by the tests that only need a judge to talk to (1 MB request limit)."""
    address = f"ipc://{tmp_path_factory.mktemp('judge')}/judge.ipc"
    live = LiveDaemon(
        address,
        "--workers", "2",
        "--math-timeout-s", "3",
        "--max-request-mb", "1",
        "--stats-interval-s", "1",
        "--time-limit-s", "2",
    )  # fmt: skip
    try:
        yield live.wait_serving()
    finally:
        live.stop()
