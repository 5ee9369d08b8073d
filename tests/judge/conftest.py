"""Fixtures for the judge's tests: a real sandbox, a live daemon, and a look at the processes below it."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from judge.config import SandboxConfig
from judge.preflight import ready_sandbox
from judge.sandbox import Sandbox
from proto.judge import JudgeRequest, TestCase
from tests.judge_daemon import LiveDaemon, descendants, judge_daemon

JAIL_UID = 65534


def code_request(
    source: str, tests: list[tuple[str, str]], *, ident: str = "c", fenced: bool = True, **fields: object
) -> JudgeRequest:
    response = f"<think>plan</think>\n```python\n{source}\n```\n" if fenced else source
    cases = [TestCase(input=i, output=o) for i, o in tests]
    return JudgeRequest(id=ident, kind="code", response=response, tests=cases, **fields)  # type: ignore[arg-type]


def math_request(response: str, answer: str, ident: str = "m") -> JudgeRequest:
    return JudgeRequest(id=ident, kind="math", response=response, answer=answer)


def uid_of(pid: int) -> int | None:
    """The real uid `pid` runs as (None if it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("Uid:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def wait_until_no_jailed_processes(daemon: LiveDaemon, timeout_s: float = 5.0) -> list[int]:
    """Poll until no process below `daemon` runs as the jail's uid (which maps to itself outside);
    returns what is left."""
    deadline = time.monotonic() + timeout_s
    while True:
        left = [pid for pid in descendants(daemon.process.pid) if uid_of(pid) == JAIL_UID]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


@pytest.fixture(scope="session")
def sandbox() -> Sandbox:
    """The real nsjail sandbox, after the same start-up check the daemon runs."""
    return ready_sandbox(SandboxConfig())


@pytest.fixture(scope="session")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveDaemon]:
    """One daemon shared by the tests that only need a judge to talk to (1 MB request limit)."""
    address = f"ipc://{tmp_path_factory.mktemp('judge')}/judge.ipc"
    live = judge_daemon(
        address,
        workers=2,
        math_timeout_s=3,
        max_request_mb=1,
        stats_interval_s=1,
        **{"sandbox.limits.time_limit_s": 2},
    )
    try:
        yield live
    finally:
        live.stop()
