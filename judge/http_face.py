"""The judge's HTTP face: SandboxFusion's `POST /run_code`, verdicts as JSON, health and metrics.

    POST /run_code      SandboxFusion's request and response (judge/sandbox_api.py)
    POST /judge         a JudgeRequest as JSON -> its Verdict as JSON
    POST /judge/batch   a list of them (or {"requests": [...]}) -> {"verdicts": [...]}, in order
    GET  /health        200 while the daemon answers, with its queue depth
    GET  /metrics       Prometheus text: queue, in flight, results by status, HTTP latency

aiohttp serves it, on an asyncio loop in a thread of the daemon's process: one package that is
both a mature asyncio server (body-size limit, graceful shutdown) and the client the load tests
use. Every request goes to the daemon as a message, over an in-process ZeroMQ socket to the
same ROUTER that remote clients reach: one bounded queue, the same workers, limits and drain.
A full queue answers 503 with Retry-After at once; a draining judge answers 503 to new work.
Request ids are the face's own on the way in (two clients may both send id "1"), and the
client's id is put back on the verdict.
"""

from __future__ import annotations

import asyncio
import hmac
import itertools
import json
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import structlog
import zmq
import zmq.asyncio
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from pydantic import ValidationError

from judge.config import HttpConfig
from judge.sandbox_api import BadRunCode, error_response, first_error, run_code_response, run_request
from proto.codec import ProtocolError, decode, encode
from proto.control import Error
from proto.judge import JudgeRequest, JudgeStats, StatsRequest, Verdict
from proto.message import Message
from proto.run import RunResult

log = structlog.get_logger("judge.http")

START_TIMEOUT_S = 10.0
STATS_TIMEOUT_S = 5.0
RETRY_LATER = frozenset({"busy", "shutting_down", "unavailable"})
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class HttpFace:
    """Serves HTTP in its own thread until `stop`; talks to the daemon at `daemon_address`."""

    def __init__(
        self, config: HttpConfig, context: zmq.Context, daemon_address: str, max_frame_bytes: int
    ) -> None:
        assert config.bind is not None
        self.config = config
        self._token = _read_token(config) if config.token_file is not None else None
        self._zmq = context
        self._daemon_address = daemon_address
        self._max_frame_bytes = max_frame_bytes
        self._ids = itertools.count()
        self._pending: dict[bytes, asyncio.Future[Message]] = {}
        self._serving = 0
        self._thread = threading.Thread(target=self._thread_main, name="judge-http", daemon=True)
        self._up = threading.Event()
        self._failure: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self.address = ""
        self._metrics = _Metrics()

    # ---- life ----------------------------------------------------------------------------
    def start(self) -> str:
        """Bind and serve; returns http://HOST:PORT. Raises OSError if it cannot bind."""
        self._thread.start()
        if not self._up.wait(START_TIMEOUT_S):
            raise OSError(f"judge http: not serving on {self.config.bind} within {START_TIMEOUT_S} s")
        if self._failure is not None:
            raise OSError(f"judge http: cannot serve on {self.config.bind}: {self._failure}")
        return self.address

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop listening, let the requests in flight finish (up to `timeout_s`), close."""
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout_s + 5.0)

    def _thread_main(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # reported to start(), or logged if serving had begun
            self._failure = exc
            if self._up.is_set():
                log.error("http_face_failed", error=repr(exc))
        finally:
            self._up.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        context = zmq.asyncio.Context.shadow(self._zmq.underlying)
        socket = context.socket(zmq.DEALER)
        socket.setsockopt(zmq.LINGER, 0)
        socket.connect(self._daemon_address)
        self._socket = socket
        app = web.Application(client_max_size=self.config.max_body_mb << 20, middlewares=[self._guard])
        app.add_routes(
            [
                web.post("/run_code", self._run_code),
                web.post("/judge", self._judge),
                web.post("/judge/batch", self._judge_batch),
                web.get("/health", self._health),
                web.get("/metrics", self._metrics_page),
            ]
        )
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=self.config.request_timeout_s)
        await runner.setup()
        reader = asyncio.create_task(self._read_replies())
        try:
            host, _, port = self.config.bind.rpartition(":")  # type: ignore[union-attr]
            site = web.TCPSite(runner, host.strip("[]"), int(port))
            await site.start()
            bound = runner.addresses[0]
            self.address = f"http://{self.config.bind.rpartition(':')[0]}:{bound[1]}"  # type: ignore[union-attr]
            log.info("http_serving", address=self.address, token=self._token is not None)
            self._up.set()
            await self._stop.wait()
        finally:
            await runner.cleanup()
            reader.cancel()
            socket.close(linger=0)

    # ---- to the daemon and back ----------------------------------------------------------
    async def _read_replies(self) -> None:
        while True:
            frames = await self._socket.recv_multipart(copy=False)
            try:
                message = decode([frame.buffer for frame in frames[1:]], self._max_frame_bytes)
            except ProtocolError as exc:
                log.warning("bad_reply", error=str(exc)[:300])
                continue
            future = self._pending.get(frames[0].bytes)
            if future is not None and not future.done():
                future.set_result(message)

    async def _ask(self, message: Message, timeout_s: float) -> Message | None:
        """The daemon's answer to `message`, or None if none came within `timeout_s`."""
        request_id = f"h{next(self._ids)}".encode()
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        try:
            async with asyncio.timeout(max(0.0, timeout_s)):
                await self._socket.send_multipart([request_id, *encode(message)], copy=False)
                return await future
        except TimeoutError:
            return None
        finally:
            self._pending.pop(request_id, None)

    async def _ask_patiently(self, message: Message, deadline: float) -> Message | None:
        """As `_ask`, retrying `busy` until `deadline` (a batch's items, each admitted when it can)."""
        delay = 0.05
        while True:
            reply = await self._ask(message, deadline - time.monotonic())
            if not (isinstance(reply, Error) and reply.code == "busy"):
                return reply
            if time.monotonic() + delay >= deadline:
                return reply
            await asyncio.sleep(delay)
            delay = min(2 * delay, 1.0)

    # ---- routes --------------------------------------------------------------------------
    async def _run_code(self, request: web.Request) -> web.Response:
        try:
            run = run_request(await _json_body(request), uuid.uuid4().hex)
        except BadRunCode as exc:
            raise _BadRequest(str(exc)) from None
        reply = await self._ask(run, self.config.request_timeout_s)
        if isinstance(reply, RunResult):
            self._metrics.count(f"run_{reply.status}")
            status = 400 if reply.status == "bad_request" else 200
            return web.json_response(run_code_response(reply), status=status)
        status, headers, detail = self._failure_of(reply)
        return web.json_response(error_response(detail), status=status, headers=headers)

    async def _judge(self, request: web.Request) -> web.Response:
        parsed = _judge_request(await _json_body(request), "")
        reply = await self._ask(
            parsed.model_copy(update={"id": uuid.uuid4().hex}), self.config.request_timeout_s
        )
        if isinstance(reply, Verdict):
            self._metrics.count(reply.status)
            return web.json_response(reply.model_copy(update={"id": parsed.id}).model_dump())
        status, headers, detail = self._failure_of(reply)
        return _problem(status, _code_of(reply), detail, headers)

    async def _judge_batch(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        items = body.get("requests") if isinstance(body, dict) else body
        if not isinstance(items, list):
            raise _BadRequest("body: a list of judge requests, or {'requests': [...]}")
        if len(items) > self.config.max_batch:
            raise _BadRequest(f"requests: {len(items)} in one batch; at most {self.config.max_batch}", 413)
        parsed = [_judge_request(item, f"requests[{index}]") for index, item in enumerate(items)]
        deadline = time.monotonic() + self.config.request_timeout_s
        replies = await asyncio.gather(
            *(
                self._ask_patiently(item.model_copy(update={"id": uuid.uuid4().hex}), deadline)
                for item in parsed
            )
        )
        verdicts: list[dict[str, Any]] = []
        for item, reply in zip(parsed, replies, strict=True):
            if isinstance(reply, Verdict):
                self._metrics.count(reply.status)
                verdicts.append(reply.model_copy(update={"id": item.id}).model_dump())
            else:
                _, _, detail = self._failure_of(reply)
                verdicts.append({"id": item.id, "error": _code_of(reply), "detail": detail})
        return web.json_response({"verdicts": verdicts})

    async def _stats(self) -> JudgeStats | None:
        reply = await self._ask(StatsRequest(), STATS_TIMEOUT_S)
        return reply if isinstance(reply, JudgeStats) else None

    async def _health(self, _request: web.Request) -> web.Response:
        stats = await self._stats()
        if stats is None:
            return _problem(503, "unavailable", f"the judge did not answer within {STATS_TIMEOUT_S:g} s")
        return web.json_response(
            {
                "status": "ok",
                "queue_depth": stats.queue_depth,
                "in_flight": stats.in_flight,
                "workers": stats.workers,
            }
        )

    async def _metrics_page(self, _request: web.Request) -> web.Response:
        self._metrics.judge = await self._stats()
        self._metrics.serving.set(self._serving)
        return web.Response(body=generate_latest(self._metrics.registry), content_type="text/plain")

    # ---- every request -------------------------------------------------------------------
    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.monotonic()
        route = request.match_info.route.resource.canonical if request.match_info.route.resource else "other"
        if self._token is not None and request.path != "/health" and not self._authorized(request):
            response: web.StreamResponse = _problem(
                401, "unauthorized", "send 'Authorization: Bearer <token>'", {"WWW-Authenticate": "Bearer"}
            )
        elif self._serving >= self.config.max_in_flight:
            detail = (
                f"{self._serving} HTTP requests in flight (limit {self.config.max_in_flight}); retry later"
            )
            response = _problem(503, "busy", detail, {"Retry-After": str(self.config.retry_after_s)})
        else:
            self._serving += 1
            try:
                response = await handler(request)
            except _BadRequest as exc:
                response = _bad(request, exc.status, exc.detail)
            except web.HTTPException as exc:  # aiohttp's own: 404, 405, 413 (body too large)
                response = _bad(request, exc.status, exc.text or exc.reason)
            finally:
                self._serving -= 1
        self._metrics.observe(route, response.status, time.monotonic() - started)
        return response

    def _authorized(self, request: web.Request) -> bool:
        given = request.headers.get("Authorization", "").encode()
        return hmac.compare_digest(given, f"Bearer {self._token}".encode())

    def _failure_of(self, reply: Message | None) -> tuple[int, dict[str, str], str]:
        """HTTP status, headers and message for an answer that is not a result."""
        if reply is None:
            return 504, {}, f"no answer within {self.config.request_timeout_s:g} s"
        if isinstance(reply, Error):
            if reply.code in RETRY_LATER:
                return 503, {"Retry-After": str(self.config.retry_after_s)}, reply.detail
            return (400 if reply.code == "bad_request" else 500), {}, reply.detail
        return 500, {}, f"unexpected answer from the judge: {reply.TYPE}"


class _Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.judge: JudgeStats | None = None
        self.requests = Counter(
            "acerl_judge_http_requests", "HTTP requests answered", ["route", "code"], registry=self.registry
        )
        self.latency = Histogram(
            "acerl_judge_http_request_seconds",
            "HTTP request latency",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.results = Counter(
            "acerl_judge_http_results",
            "verdicts and run results served over HTTP",
            ["status"],
            registry=self.registry,
        )
        self.serving = Gauge(
            "acerl_judge_http_in_flight", "HTTP requests being served", registry=self.registry
        )
        self.registry.register(_DaemonStats(self))

    def observe(self, route: str, code: int, seconds: float) -> None:
        self.requests.labels(route, str(code)).inc()
        self.latency.labels(route).observe(seconds)

    def count(self, status: str) -> None:
        self.results.labels(status).inc()


class _DaemonStats(Collector):
    """The daemon's own figures (all faces together), as of the last scrape's stats request."""

    def __init__(self, metrics: _Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        stats = self.metrics.judge
        up = GaugeMetricFamily("acerl_judge_up", "1 if the daemon answered the last scrape")
        up.add_metric([], 0.0 if stats is None else 1.0)
        yield up
        if stats is None:
            return
        for name, value, text in (
            ("queue_depth", stats.queue_depth, "requests waiting for a worker"),
            ("in_flight", stats.in_flight, "requests being judged"),
            ("workers", stats.workers, "worker processes"),
            ("uptime_seconds", stats.uptime_s, "seconds since the daemon started"),
        ):
            gauge = GaugeMetricFamily(f"acerl_judge_{name}", text)
            gauge.add_metric([], float(value))
            yield gauge
        results = CounterMetricFamily(
            "acerl_judge_results", "results by status, all faces", labels=["status"]
        )
        for status, count in sorted(stats.counts.items()):
            results.add_metric([status], float(count))
        yield results
        for quantile, value in sorted(stats.latency_ms.items()):
            gauge = GaugeMetricFamily(f"acerl_judge_latency_{quantile}_ms", f"judging latency, {quantile}")
            gauge.add_metric([], value)
            yield gauge


def _read_token(config: HttpConfig) -> str:
    assert config.token_file is not None
    try:
        token = config.token_file.read_text().strip()
    except OSError as exc:
        raise OSError(f"http.token_file: cannot read {config.token_file}: {exc}") from None
    if len(token) < 16:
        raise OSError(f"http.token_file: {config.token_file} holds a token under 16 characters")
    return token


class _BadRequest(Exception):
    """A request that cannot be served as sent: answered 4xx with `detail`."""

    def __init__(self, detail: str, status: int = 400) -> None:
        super().__init__(detail)
        self.detail = detail
        self.status = status


def _bad(request: web.Request, status: int, detail: str) -> web.Response:
    if request.path == "/run_code":  # in the schema its clients parse
        return web.json_response(error_response(detail), status=status)
    return _problem(status, "bad_request", detail)


async def _json_body(request: web.Request) -> Any:
    try:
        return json.loads(await request.read())
    except ValueError as exc:
        raise _BadRequest(f"body: not JSON ({exc})") from None


def _judge_request(body: Any, where: str) -> JudgeRequest:
    if not isinstance(body, dict):
        raise _BadRequest(f"{where or 'body'}: a judge request is a JSON object")
    try:
        return JudgeRequest.model_validate_json(json.dumps({"id": "request", **body}))
    except ValidationError as exc:
        raise _BadRequest(first_error(exc, where)) from None


def _code_of(reply: Message | None) -> str:
    if reply is None:
        return "timeout"
    return reply.code if isinstance(reply, Error) else "internal"


def _problem(status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": code, "detail": detail}, status=status, headers=headers)
