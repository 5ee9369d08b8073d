"""JudgeClient: one verdict per submitted id, retries that never count twice, timeouts as `timeout`."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from proto.judge import UNJUDGED_STATUSES
from proto.judge_client import JudgeClient
from tests.judge.conftest import code_request, math_request
from tests.judge_daemon import LiveDaemon, judge_daemon


def test_unreachable_judge_gives_timeout_verdicts(tmp_path: Path) -> None:
    address = f"ipc://{tmp_path}/nobody.ipc"
    with JudgeClient(address, request_timeout_s=0.3, attempts=2, backoff_s=0.01) as client:
        client.submit([math_request("\\boxed{1}", "1", "a"), math_request("\\boxed{1}", "1", "b")])
        start = time.monotonic()
        verdicts = list(client.verdicts(timeout_s=10))
    assert sorted(verdict.id for verdict in verdicts) == ["a", "b"]
    assert all(verdict.status == "timeout" and verdict.reward == 0 for verdict in verdicts)
    assert "timeout" in UNJUDGED_STATUSES  # a trainer drops these, never rewards them 0
    assert time.monotonic() - start < 5
    assert client.pending == 0


def test_a_pending_id_cannot_be_submitted_twice(tmp_path: Path) -> None:
    with JudgeClient(f"ipc://{tmp_path}/nobody.ipc") as client:
        client.submit(math_request("\\boxed{1}", "1", "same"))
        with pytest.raises(ValueError, match="already pending"):
            client.submit(math_request("\\boxed{2}", "2", "same"))


def test_resends_are_judged_once_and_delivered_once(daemon: LiveDaemon) -> None:
    slow = code_request(
        "import time\ntime.sleep(1.2)\nprint('ok')", [("", "ok")], ident="resent", time_limit_s=5
    )
    with JudgeClient(daemon.address, request_timeout_s=0.4, attempts=100) as client:
        before = client.stats().counts.get("accepted", 0)
        client.submit(slow)
        verdicts = list(client.verdicts(timeout_s=60))
        assert [verdict.id for verdict in verdicts] == ["resent"]
        assert verdicts[0].status == "accepted"
        assert client.resends >= 1  # it timed out at least once and was sent again
        time.sleep(0.5)  # let the answers to the resends arrive: they must be dropped
        assert client.poll(0.2) == []
        assert client.duplicates >= 1
        after = client.stats().counts.get("accepted", 0)
    assert after - before == 1, "the daemon judged a resent request more than once"


@pytest.mark.slow
def test_verdicts_survive_a_daemon_killed_and_restarted(tmp_path: Path) -> None:
    address = f"ipc://{tmp_path}/restart.ipc"
    first = judge_daemon(address, workers=1)
    requests = [
        code_request("import time\ntime.sleep(1)\nprint(int(input()))", [(str(i), str(i))], ident=f"r{i}")
        for i in range(3)
    ]
    with JudgeClient(address, request_timeout_s=3, attempts=5) as client:
        client.submit(requests)
        client.poll(0.3)  # on the wire, being judged
        first.process.send_signal(signal.SIGKILL)
        first.process.wait(10)
        second = judge_daemon(address, workers=1)
        try:
            verdicts = list(client.verdicts(timeout_s=90))
        finally:
            second.stop()
            first.stop()  # its workers, left behind when it was killed alone
    assert sorted(verdict.id for verdict in verdicts) == ["r0", "r1", "r2"]
    assert all(verdict.status == "accepted" for verdict in verdicts), verdicts
