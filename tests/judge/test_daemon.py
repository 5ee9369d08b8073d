"""The live daemon over real sockets: concurrency, stats, bad frames, backpressure, shutdown, start-up."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import msgpack
import pytest
import zmq

from proto.codec import decode, encode
from proto.control import Error, Heartbeat
from proto.curve import CurveClientKeys, generate_keys
from proto.judge import JudgeStats, StatsRequest, Verdict
from proto.judge_client import JudgeClient
from proto.message import PROTOCOL_VERSION
from proto.sockets import Client
from tests.judge.conftest import code_request, math_request
from tests.judge_daemon import (
    ROOT,
    LiveDaemon,
    descendants,
    free_port,
    judge_daemon,
    judge_serve_command,
    still_running,
)


def slow_request(seconds: float, ident: str | None = None) -> object:
    program = f"import time\ntime.sleep({seconds})\nprint('slept')"
    return code_request(
        program, [("", "slept")], ident=ident or f"slow-{uuid.uuid4().hex[:8]}", time_limit_s=5
    )


def mixed_requests(prefix: str) -> dict[str, tuple[object, str]]:
    """Requests and the status each must get."""
    call = "class Solution:\n    def f(self, a):\n        return a[::-1]"
    cases = [
        ("m-ok", math_request("\\boxed{\\frac{2}{4}}", "0.5"), "correct"),
        ("m-no", math_request("\\boxed{3}", "4"), "wrong_answer"),
        ("m-none", math_request("<think>\\boxed{4}</think>four", "4"), "no_answer"),
        ("c-ok", code_request("print(int(input()) + 1)", [("1", "2")]), "accepted"),
        ("c-no", code_request("print(0)", [("1", "2")]), "wrong_answer"),
        ("c-call", code_request(call, [("[1,2]", "[2,1]")], fn_name="f"), "accepted"),
    ]
    return {
        f"{prefix}-{name}": (request.model_copy(update={"id": f"{prefix}-{name}"}), status)
        for name, request, status in cases
    }


def test_concurrent_clients_get_their_own_verdicts_and_stats_count_them(daemon: LiveDaemon) -> None:
    with JudgeClient(daemon.address) as probe:
        before = probe.stats()
    results: dict[str, dict[str, Verdict]] = {}

    def run(prefix: str) -> None:
        expected = mixed_requests(prefix)
        with JudgeClient(daemon.address, request_timeout_s=60) as client:
            results[prefix] = client.judge([request for request, _ in expected.values()], timeout_s=120)

    threads = [threading.Thread(target=run, args=(f"client{i}",)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(180)
    for prefix, verdicts in results.items():
        expected = mixed_requests(prefix)
        assert {ident: verdict.status for ident, verdict in verdicts.items()} == {
            ident: status for ident, (_, status) in expected.items()
        }
        assert all(
            verdict.reward == (verdict.status in ("correct", "accepted")) for verdict in verdicts.values()
        )
    assert len(results) == 3
    with JudgeClient(daemon.address) as probe:
        after = probe.stats()
    assert after.counts.get("accepted", 0) - before.counts.get("accepted", 0) == 6
    assert after.counts.get("correct", 0) - before.counts.get("correct", 0) == 3
    assert set(after.latency_ms) == {"p50", "p90", "p99", "max"}
    assert after.latency_ms["max"] >= after.latency_ms["p50"] > 0
    assert after.workers == 2 and after.queue_depth == 0 and after.uptime_s > before.uptime_s
    deadline = time.monotonic() + 5  # logged every second (--stats-interval-s 1): wait for one
    while not any("judge_stats" in line for line in daemon.log) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert any("judge_stats" in line and '"counts": ' in line for line in daemon.log)


def _raw_socket(address: str) -> tuple[zmq.Context, zmq.Socket]:
    context = zmq.Context()
    dealer = context.socket(zmq.DEALER)
    dealer.setsockopt(zmq.RCVTIMEO, 10_000)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.connect(address)
    return context, dealer


def _error_reply(dealer: zmq.Socket, *frames: bytes) -> Error:
    dealer.send_multipart(list(frames))
    reply = dealer.recv_multipart()
    message = decode(reply[1:])
    assert isinstance(message, Error), message
    return message


def test_malformed_and_oversized_messages_get_clear_errors(daemon: LiveDaemon) -> None:
    context, dealer = _raw_socket(daemon.address)
    try:
        error = _error_reply(dealer, b"r1", b"\xc1 not msgpack")
        assert error.code == "bad_request" and "not a msgpack document" in error.detail
        error = _error_reply(dealer, b"r2", msgpack.packb([PROTOCOL_VERSION, "no_such_type", {}]))
        assert "unknown message type" in error.detail
        bad_kind = msgpack.packb(
            [PROTOCOL_VERSION, "judge_request", {"id": "x", "kind": "poem", "response": ""}]
        )
        error = _error_reply(dealer, b"r3", bad_kind)
        assert error.detail.startswith("judge_request.kind")
        no_tests = msgpack.packb(
            [PROTOCOL_VERSION, "judge_request", {"id": "x", "kind": "code", "response": ""}]
        )
        assert "tests" in _error_reply(dealer, b"r4", no_tests).detail
        error = _error_reply(dealer, b"r5", *encode(Heartbeat(sender="someone", role="client", time=0.0)))
        assert error.detail == "the judge serves judge_request, run_request and stats_request, not heartbeat"
        oversized = code_request("print(1)", [("x" * (1536 << 10), "1")], ident="big")  # 1.5 MB, limit 1 MB
        error = _error_reply(dealer, b"r6", *encode(oversized))
        assert "exceeds the limit" in error.detail
        dealer.send_multipart([b"r7", b"y" * (3 << 20)])  # beyond twice the limit: the connection is dropped
    finally:
        dealer.close()
        context.term()
    with JudgeClient(daemon.address) as client:
        verdict = client.judge([code_request("print(7)", [("", "7")], ident="after-garbage")], timeout_s=60)
    assert verdict["after-garbage"].status == "accepted"
    assert any("bad_frame" in line for line in daemon.log)


def test_a_client_disconnecting_mid_request_loses_nothing_for_others(daemon: LiveDaemon) -> None:
    leaver = Client(daemon.address)
    for index in range(4):
        leaver.send(slow_request(0.3, f"leaver-{index}"))
    time.sleep(0.1)
    leaver.close()  # gone before any of its verdicts
    expected = mixed_requests("stayer")
    with JudgeClient(daemon.address, request_timeout_s=60) as client:
        verdicts = client.judge([request for request, _ in expected.values()], timeout_s=120)
        assert client.duplicates == 0
    assert {ident: verdict.status for ident, verdict in verdicts.items()} == {
        ident: status for ident, (_, status) in expected.items()
    }
    assert daemon.process.poll() is None


def test_math_that_hangs_times_out_and_the_worker_is_replaced(daemon: LiveDaemon) -> None:
    hostile = {
        "tower": (math_request("\\boxed{9^{9^{9^{9}}}}", "5", "tower"), {"timeout"}),
        "braces": (math_request("\\boxed{" + "{" * 500_000 + "}" * 500_000 + "}", "5", "braces"),
                   {"timeout", "wrong_answer", "no_answer"}),
        "after": (math_request("\\boxed{\\sqrt{8}}", "2\\sqrt{2}", "after"), {"correct"}),
    }  # fmt: skip
    with JudgeClient(daemon.address, request_timeout_s=60) as client:
        verdicts = client.judge([request for request, _ in hostile.values()], timeout_s=120)
    for ident, (_, allowed) in hostile.items():
        assert verdicts[ident].status in allowed, verdicts[ident]
    assert "math-verify took longer than 3 s" in verdicts["tower"].detail
    assert any("worker_replaced" in line and "deadline" in line for line in daemon.log)


@pytest.mark.slow
def test_a_large_math_request_behind_a_hanging_one_does_not_block_the_daemon(tmp_path: Path) -> None:
    """The only worker hangs in math-verify. A request too large for the worker's pipe must wait in
    the daemon's queue, not in a send to that worker: a send blocked until the worker reads would
    stop the daemon's loop, which then never kills the worker at its deadline (the worker spins on,
    even after the daemon is gone)."""
    live = judge_daemon(f"ipc://{tmp_path}/stacked.ipc", workers=1, math_timeout_s=2)
    raw = Client(live.address)
    replies: dict[bytes, object] = {}
    try:
        started = time.monotonic()
        hanging = raw.send(math_request("\\boxed{9^{9^{9^{9}}}}", "5", "tower"))
        thinking = "<think>" + "x" * (2 << 20) + "</think>\\boxed{2}"  # ten times a pipe's buffer
        large = raw.send(math_request(thinking, "2", "large"))
        while len(replies) < 2 and time.monotonic() - started < 20:
            reply = raw.recv(1000)
            if reply is not None:
                replies[reply.request_id] = reply.message
        took = time.monotonic() - started
    finally:
        raw.close()
        below = descendants(live.process.pid)
        live.process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            live.process.wait(10)
        code = live.process.returncode
        stray = still_running(below, 5.0)
        live.stop()  # the daemon's own workers, left spinning: never leave them behind
    statuses = {ident: getattr(message, "status", message) for ident, message in replies.items()}
    assert statuses == {hanging: "timeout", large: "correct"}, f"after {took:.1f} s: {statuses}"
    assert took < 15
    assert code == 0, "the daemon did not stop on SIGTERM"
    assert not stray, f"processes of the daemon left running: {stray}"


@pytest.mark.slow
def test_a_full_queue_answers_busy_and_the_client_retries(tmp_path: Path) -> None:
    live = judge_daemon(f"ipc://{tmp_path}/busy.ipc", workers=1, queue_limit=2)
    try:
        raw = Client(live.address)
        sent = [raw.send(slow_request(0.2, f"raw-{index}")) for index in range(8)]
        replies = [raw.recv(30_000) for _ in sent]
        raw.close()
        busy = [reply for reply in replies if isinstance(reply.message, Error)]
        judged = [reply for reply in replies if isinstance(reply.message, Verdict)]
        assert busy and all(reply.message.code == "busy" for reply in busy)
        assert "queue full" in busy[0].message.detail
        assert len(judged) == len(sent) - len(busy) and all(r.message.status == "accepted" for r in judged)
        with JudgeClient(live.address, backoff_s=0.05) as client:
            requests = [slow_request(0.1, f"patient-{index}") for index in range(8)]
            verdicts = client.judge(requests, timeout_s=120)
            assert sorted(verdicts) == sorted(request.id for request in requests)
            assert all(verdict.status == "accepted" for verdict in verdicts.values())
            assert client.resends > 0 and client.duplicates == 0
            assert client.stats().counts["busy"] >= len(busy) + 1
    finally:
        assert live.stop() == 0


@pytest.mark.slow
def test_sigterm_drains_in_flight_work_within_its_deadline(tmp_path: Path) -> None:
    live = judge_daemon(f"ipc://{tmp_path}/drain.ipc", workers=1, drain_timeout_s=4)
    raw = Client(live.address)
    try:
        short = raw.send(slow_request(1.0, "short"))
        long = raw.send(slow_request(30.0, "long"))  # waits behind `short`, cannot finish in time
        time.sleep(0.5)
        stopping = time.monotonic()
        live.process.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        late = raw.send(math_request("\\boxed{1}", "1", "late"))
        replies = {}
        while len(replies) < 3:
            reply = raw.recv(20_000)
            assert reply is not None, f"missing replies, got {replies}"
            replies[reply.request_id] = reply.message
        assert isinstance(replies[short], Verdict) and replies[short].status == "accepted"
        assert isinstance(replies[late], Error) and replies[late].code == "shutting_down"
        assert isinstance(replies[long], Error) and replies[long].code == "shutting_down"
        assert live.process.wait(15) == 0
        assert time.monotonic() - stopping < 12
        log = "".join(live.log)
        assert "judge_draining" in log and "judge_drain_incomplete" in log and "judge_stopped" in log
    finally:
        raw.close()
        live.stop()


def _run(command: list[str], stdin: str = "", timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command,
        cwd=ROOT,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_refuses_to_start_when_nsjail_cannot_run(tmp_path: Path) -> None:
    address = f"ipc://{tmp_path}/never.ipc"
    result = _run(judge_serve_command(address, **{"sandbox.nsjail": "/bin/false"}))
    assert result.returncode == 3
    assert "refusing to start" in result.stderr and "sandbox_error" in result.stderr
    result = _run(judge_serve_command(address, **{"sandbox.nsjail": "/nonexistent/nsjail"}))
    assert result.returncode == 3
    assert "/nonexistent/nsjail does not exist" in result.stderr


def test_unsafe_mode_runs_without_nsjail_and_warns() -> None:
    line = code_request("print(int(input()) * 3)", [("2", "6")], ident="u").model_dump_json()
    command = [sys.executable, "-m", "judge", "check", "sandbox.unsafe_no_sandbox=true", "workers=1"]
    result = _run(command, stdin=line + "\n")
    assert result.returncode == 0, result.stderr
    assert '"status": "accepted"' in result.stdout
    assert "unsafe_no_sandbox" in result.stderr and "WITHOUT nsjail" in result.stderr


def test_bad_configuration_names_the_field(tmp_path: Path) -> None:
    result = _run(judge_serve_command(f"ipc://{tmp_path}/never.ipc", **{"sandbox.limits.time_limit_s": -1}))
    assert result.returncode == 2
    assert "sandbox.limits.time_limit_s" in result.stderr


@pytest.mark.slow
def test_off_loopback_only_with_curve(tmp_path: Path) -> None:
    result = _run(judge_serve_command(f"tcp://0.0.0.0:{free_port('0.0.0.0')}"))
    assert result.returncode == 2 and "CURVE" in result.stderr
    server_public, server_secret = generate_keys(tmp_path / "server", "judge")
    _, client_secret = generate_keys(tmp_path / "clients", "generator")
    live = judge_daemon(
        "tcp://0.0.0.0:0", workers=1, curve_secret=server_secret, curve_clients=tmp_path / "clients"
    )
    port = live.address.rsplit(":", 1)[1]
    try:
        keys = CurveClientKeys(server_public, client_secret)
        with JudgeClient(f"tcp://127.0.0.1:{port}", curve=keys) as client:
            verdicts = client.judge([math_request("\\boxed{2}", "2", "curve")], timeout_s=60)
        assert verdicts["curve"].status == "correct"
        stranger = Client(f"tcp://127.0.0.1:{port}", curve=CurveClientKeys(server_public))  # unknown key
        with pytest.raises(TimeoutError):
            stranger.request(StatsRequest(), timeout_ms=1500)
        stranger.close()
    finally:
        assert live.stop() == 0


def test_stats_request_answers_judge_stats(daemon: LiveDaemon) -> None:
    with Client(daemon.address) as raw:
        stats = raw.request(StatsRequest(), timeout_ms=10_000)
    assert isinstance(stats, JudgeStats)
    assert stats.workers == 2 and stats.in_flight >= 0
