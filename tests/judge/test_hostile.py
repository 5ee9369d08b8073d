"""Hostile programs through the live daemon: each is contained, the host is checked afterwards,
and the judge still accepts a correct program right after."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from judge.code_check import judge_code
from judge.config import SandboxConfig
from judge.sandbox import Sandbox
from proto.judge import JudgeRequest, Verdict
from proto.judge_client import JudgeClient
from tests.judge.conftest import JAIL_UID, code_request, wait_until_no_jailed_processes
from tests.judge_daemon import ROOT, LiveDaemon, descendants


@pytest.fixture(scope="module")
def sentinel() -> Iterator[subprocess.Popen[bytes]]:
    """A host process running as the jail's uid: a jailed program must not be able to touch it."""
    process = subprocess.Popen(["sleep", "600"], user=JAIL_UID, group=JAIL_UID)
    yield process
    process.kill()
    process.wait()


@pytest.fixture
def judged(daemon: LiveDaemon, sentinel: subprocess.Popen[bytes]) -> Iterator[JudgeClientCheck]:
    with JudgeClient(daemon.address, request_timeout_s=120) as client:
        yield JudgeClientCheck(client, daemon, sentinel)


class JudgeClientCheck:
    def __init__(self, client: JudgeClient, daemon: LiveDaemon, sentinel: subprocess.Popen[bytes]) -> None:
        self.client = client
        self.daemon = daemon
        self.sentinel = sentinel

    def __call__(self, request: JudgeRequest) -> Verdict:
        """Judge `request`, then check the host: nothing of the jail left, sentinel alive, judge serving."""
        verdict = self.client.judge([request], timeout_s=120)[request.id]
        left = wait_until_no_jailed_processes(self.daemon)
        assert not left, f"processes of the submission left running: {left}"
        assert self.sentinel.poll() is None, "a jailed program killed a host process"
        sanity = code_request("print(int(input()) * 2)", [("21", "42")], ident=f"sanity-{uuid.uuid4().hex}")
        after = self.client.judge([sanity], timeout_s=60)[sanity.id]
        assert after.status == "accepted", f"the judge stopped serving properly: {after}"
        return verdict


@pytest.mark.slow
def test_fork_bomb(judged: JudgeClientCheck) -> None:
    bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass"
    verdict = judged(code_request(bomb, [("", "")], ident="fork-bomb", time_limit_s=1))
    assert verdict.status in ("time_limit", "runtime_error"), verdict


def test_network_connection_attempt(judged: JudgeClientCheck) -> None:
    listener = socket.socket()
    listener.bind(("0.0.0.0", 0))
    listener.listen()
    listener.setblocking(False)
    port = listener.getsockname()[1]
    host_ip = socket.gethostbyname(socket.gethostname())
    targets = [("127.0.0.1", port), (host_ip, port), ("1.1.1.1", 443), ("pypi.org", 443)]
    program = f"""
import socket
reached = []
for host, port in {targets!r}:
    try:
        socket.create_connection((host, port), timeout=1)
        reached.append(host)
    except OSError:
        pass
print("reached", reached)
print("connected")
"""
    try:
        verdict = judged(code_request(program, [("", "connected")], ident="network"))
        assert verdict.status == "wrong_answer"
        assert "reached []" in verdict.detail
        with pytest.raises(BlockingIOError):
            listener.accept()  # nothing came in from the jail
    finally:
        listener.close()


def test_writes_outside_the_jail(judged: JudgeClientCheck) -> None:
    token = uuid.uuid4().hex
    targets = [
        f"/tmp/escape-{token}",
        str(ROOT / f"escape-{token}"),
        f"/usr/escape-{token}",
        f"/escape-{token}",
    ]
    program = f"""
import os
wrote = []
for path in {targets!r}:
    try:
        with open(path, "w") as handle:
            handle.write("escaped")
        wrote.append(path)
    except OSError:
        pass
print(wrote)
"""
    verdict = judged(code_request(program, [("", "nothing")], ident="writes"))
    assert verdict.status == "wrong_answer"
    for path in targets:
        assert not Path(path).exists(), f"a jailed program created {path} on the host"


def test_tmp_is_private_to_each_submission(judged: JudgeClientCheck) -> None:
    token = uuid.uuid4().hex
    writer = f"open('/tmp/{token}', 'w').write('secret')\nprint('written')"
    assert judged(code_request(writer, [("", "written")], ident="tmp-writer")).status == "accepted"
    reader = f"import os\nprint(os.path.exists('/tmp/{token}'))"
    assert judged(code_request(reader, [("", "False")], ident="tmp-reader")).status == "accepted"


def test_reading_host_secrets(judged: JudgeClientCheck) -> None:
    shadow = Path("/etc/shadow").read_text()
    program = "for path in ('/etc/shadow', '/etc/passwd', '/root/.bashrc', '/proc/1/environ'):\n"
    program += "    try:\n        print(open(path).read(), end='')\n    except OSError:\n        pass"
    verdict = judged(code_request(program, [("", shadow)], ident="secrets"))
    assert verdict.status == "wrong_answer"
    assert ", got 0;" in verdict.detail  # the program printed nothing: it read none of them


def test_a_root_only_file_bound_into_the_jail_stays_unreadable() -> None:
    """The uid-mapping trap: the jail's uid must be unprivileged outside, not root."""
    folder = Path(tempfile.mkdtemp(prefix="judge-secret-", dir="/tmp"))
    folder.chmod(0o755)  # reachable; the file itself is root's alone
    secret = folder / "secret"
    secret.write_text("top secret\n")
    secret.chmod(0o600)
    sandbox = Sandbox(SandboxConfig(extra_ro_binds=[f"{secret}:/secret"]))
    sandbox.prepare()
    program = "import os\nprint(os.getuid(), os.getgid())\nprint(open('/secret').read())"
    outcome = judge_code(code_request(program, [("", f"{JAIL_UID} {JAIL_UID}\ntop secret")]), sandbox)
    assert outcome.status == "runtime_error", outcome.detail
    assert "PermissionError" in outcome.detail
    shutil.rmtree(folder)


def test_killing_the_parent_and_everything_else(judged: JudgeClientCheck) -> None:
    program = """
import os, signal
for sig in (signal.SIGKILL, signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGSEGV, signal.SIGSTOP):
    for pid in (os.getppid(), 1):
        try:
            os.kill(pid, sig)
        except OSError:
            pass
try:
    os.kill(-1, signal.SIGKILL)
except OSError:
    pass
print("alive")
"""
    # Three tests: the runner (the parent) must survive each to run the next.
    verdict = judged(code_request(program, [("", "alive")] * 3, ident="kill-parent"))
    assert verdict.status == "accepted", verdict


def test_a_child_left_sleeping_after_exit(judged: JudgeClientCheck) -> None:
    program = """
import os, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        time.sleep(1000)
    os._exit(0)
print("done")
"""
    verdict = judged(code_request(program, [("", "done")] * 3, ident="orphan"))
    assert verdict.status == "accepted", verdict


@pytest.mark.slow
def test_thousands_of_threads(judged: JudgeClientCheck) -> None:
    program = """
import threading, time
threads = [threading.Thread(target=time.sleep, args=(60,), daemon=True) for _ in range(5000)]
for thread in threads:
    thread.start()
print("started")
"""
    verdict = judged(code_request(program, [("", "started")], ident="threads"))
    assert verdict.status == "runtime_error", verdict
    assert "can't start new thread" in verdict.detail


@pytest.mark.slow
def test_memory_bombs(judged: JudgeClientCheck) -> None:
    single = "x = []\nwhile True:\n    x.append(bytearray(16 << 20))"
    verdict = judged(code_request(single, [("", "")], ident="memory-bomb", memory_limit_mb=256))
    assert verdict.status == "memory_limit", verdict
    # Each process stays under its own address-space limit; together they pass the jail's cgroup.
    spread = """
import os, time
for _ in range(5):
    if os.fork() == 0:
        block = bytearray(200 << 20)
        for i in range(0, len(block), 4096):
            block[i] = 1
        time.sleep(5)
        os._exit(0)
time.sleep(5)
print("survived")
"""
    verdict = judged(code_request(spread, [("", "survived")], ident="cgroup-bomb", memory_limit_mb=256))
    assert verdict.status != "accepted", verdict


def test_output_floods(judged: JudgeClientCheck) -> None:
    stdout = "import sys\nwhile True:\n    sys.stdout.write('x' * 65536)"
    assert judged(code_request(stdout, [("", "")], ident="stdout-flood")).status == "output_limit"
    stderr = "import sys\nwhile True:\n    sys.stderr.write('x' * 65536)"
    assert judged(code_request(stderr, [("", "")], ident="stderr-flood")).status == "output_limit"
    disk = "with open('/tmp/fill', 'w') as f:\n    while True:\n        f.write('x' * 65536)"
    verdict = judged(code_request(disk, [("", "")], ident="disk-flood"))
    assert verdict.status == "runtime_error", verdict
    assert "File too large" in verdict.detail or "No space left" in verdict.detail


def test_the_jail_cgroups_are_emptied(daemon: LiveDaemon) -> None:
    """No jail cgroup keeps a process of this daemon (teardown may lag a verdict by milliseconds)."""

    def occupied() -> list[Path]:
        ours = {str(pid) for pid in descendants(daemon.process.pid)}
        return [
            path
            for controller in ("memory", "pids")
            for path in Path(f"/sys/fs/cgroup/{controller}/NSJAIL").glob("NSJAIL.*")
            if path.is_dir() and ours.intersection(_read(path / "cgroup.procs").split())
        ]

    deadline = time.monotonic() + 5
    while occupied() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not occupied(), f"cgroups still holding processes: {occupied()}"


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""
