"""`python -m judge serve`: the judge as a ZeroMQ ROUTER service.

One thread owns the socket, the queue and the worker pool. Requests: `JudgeRequest` (answered
with a `Verdict` on the same request id), `RunRequest` (answered with a `RunResult`),
`StatsRequest` (answered with `JudgeStats`); the HTTP face (`judge/http_face.py`) is one more
peer of the same socket. A full queue answers `Error(code="busy")` at once, holding nothing; a
frame that is not a valid message gets `Error(code="bad_request")` from proto's Server.
SIGTERM/SIGINT: stop taking requests (`Error(code="shutting_down")`), finish queued and running
work for up to `drain_timeout_s`, answer what is left with `shutting_down`, and exit.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from types import FrameType

import structlog

from judge.config import JudgeConfig
from judge.dispatch import Answer, Dispatcher
from judge.http_face import HttpFace
from judge.pool import WorkerPool
from judge.preflight import ready_sandbox
from proto.control import Error
from proto.curve import CurveServerKeys
from proto.judge import JudgeRequest, StatsRequest
from proto.ready import announce_ready
from proto.run import RunRequest
from proto.sockets import Request, Server, SocketLimits

log = structlog.get_logger("judge.daemon")

BUSY_POLL_S = 0.002  # while work is in flight: how long to wait on the workers per turn
IDLE_POLL_MS = 50  # while idle: how long to wait on the socket per turn
MAX_RECV_PER_TURN = 256


class JudgeDaemon:
    def __init__(self, config: JudgeConfig) -> None:
        self.config = config
        sandbox = ready_sandbox(config.sandbox)
        curve = None
        if config.curve_secret is not None:
            curve = CurveServerKeys(config.curve_secret, config.curve_clients)
        limits = SocketLimits(max_frame_bytes=config.max_request_mb << 20, send_timeout_ms=1000)
        self.server = Server(config.bind, curve=curve, limits=limits, name="judge")
        try:
            self.pool = WorkerPool(config, cgroups=sandbox.cgroups)
        except BaseException:
            self.server.close()
            raise
        self.dispatcher = Dispatcher(config, self.pool)
        self.http: HttpFace | None = None
        if config.http.bind is not None:
            # Inside the daemon's process, one more peer of its socket: the same queue and drain.
            inproc = self.server.bind_inproc(f"judge-http-{id(self):x}")
            self.http = HttpFace(config.http, self.server.context, inproc, limits.max_frame_bytes)
            try:
                self.http.start()
            except BaseException:
                self.http.stop()
                self.pool.close()
                self.server.close()
                raise
        self._stop_reason: str | None = None
        self._next_stats = time.monotonic() + config.stats_interval_s

    @property
    def address(self) -> str:
        return self.server.address

    def request_stop(self, reason: str) -> None:
        if self._stop_reason is None:
            self._stop_reason = reason

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self.request_stop(signal.Signals(signum).name)

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    # ---- the loop ------------------------------------------------------------------------
    def serve(self) -> None:
        log.info(
            "judge_serving",
            address=self.address,
            workers=self.pool.size,
            queue_limit=self.config.queue_limit,
            curve=self.config.curve_secret is not None,
            http=self.http.address if self.http else None,
        )
        try:
            while self._stop_reason is None:
                self._turn()
            self._drain()
        finally:
            self._log_stats()
            if self.http is not None:
                self.http.stop()
            self.pool.close()
            self.server.close()
            log.info("judge_stopped", reason=self._stop_reason)

    def _turn(self, accepting: bool = True) -> None:
        busy = not self.dispatcher.idle
        for waiters, verdict in self.dispatcher.step(BUSY_POLL_S if busy else 0.0):
            self._answer(waiters, verdict)
        request = self.server.recv(0 if busy else IDLE_POLL_MS)
        received = 0
        while request is not None:
            self._handle(request, accepting)
            received += 1
            if received >= MAX_RECV_PER_TURN:
                break
            request = self.server.recv(0)
        if time.monotonic() >= self._next_stats:
            self._log_stats()
            self._next_stats = time.monotonic() + self.config.stats_interval_s

    def _handle(self, request: Request, accepting: bool) -> None:
        message = request.message
        if isinstance(message, StatsRequest):
            self.server.reply(request, self.dispatcher.stats())
            return
        if not isinstance(message, JudgeRequest | RunRequest):
            self.dispatcher.counters.count("rejected")
            detail = f"the judge serves judge_request, run_request and stats_request, not {message.TYPE}"
            self.server.reply_error(request, "bad_request", detail)
            return
        if not accepting:
            self.server.send(
                request.peer,
                _error("shutting_down", "the judge is shutting down", message.id),
                request.request_id,
            )
            return
        admission = self.dispatcher.offer((request.peer, message.TYPE, message.id), message, request)
        if admission == "busy":
            detail = (
                f"queue full ({self.dispatcher.queue_depth} requests waiting, limit "
                f"{self.config.queue_limit}); retry later"
            )
            self.server.send(request.peer, _error("busy", detail, message.id), request.request_id)

    def _answer(self, waiters: list[Request], result: Answer) -> None:
        for waiter in waiters:
            self.server.reply(waiter, result)  # False: the client left; nothing to keep

    def _drain(self) -> None:
        deadline = time.monotonic() + self.config.drain_timeout_s
        log.info(
            "judge_draining",
            reason=self._stop_reason,
            queued=self.dispatcher.queue_depth,
            in_flight=self.dispatcher.in_flight,
            deadline_s=self.config.drain_timeout_s,
        )
        while not self.dispatcher.idle and time.monotonic() < deadline:
            self._turn(accepting=False)
        left = self.dispatcher.abandon()
        for waiters in left:
            for waiter in waiters:
                ref = waiter.message.id if isinstance(waiter.message, JudgeRequest | RunRequest) else None
                error = _error("shutting_down", "the judge stopped before judging this", ref)
                self.server.send(waiter.peer, error, waiter.request_id)
        if left:
            log.warning("judge_drain_incomplete", unanswered=len(left))

    def _log_stats(self) -> None:
        stats = self.dispatcher.stats()
        log.info(
            "judge_stats",
            counts=stats.counts,
            latency_ms=stats.latency_ms,
            queue_depth=stats.queue_depth,
            in_flight=stats.in_flight,
            workers=stats.workers,
            workers_replaced=self.pool.recycled,
            bad_frames=self.server.rejected,
            uptime_s=stats.uptime_s,
        )


def _error(code: str, detail: str, ref_id: str | None) -> Error:
    return Error(code=code, detail=detail, ref_id=ref_id)  # type: ignore[arg-type]


def serve(config: JudgeConfig, ready_file: Path | None = None) -> None:
    daemon = JudgeDaemon(config)
    daemon.install_signal_handlers()
    addresses = {"address": daemon.address}
    if daemon.http is not None:
        addresses["http"] = daemon.http.address
    announce_ready(ready_file, **addresses)
    daemon.serve()
