"""Fetching a policy version from the weight publisher: WeightRequest, then its WeightChunk stream.

`fetch_weights` runs one transfer into a shared-memory WeightSet. `WeightFetcher` runs transfers
in a background thread with its own socket, so that a version announced while the engine is
still sampling is downloaded meanwhile; only the newest wanted version is kept. While a version
arrives, `WeightFetcher.arriving` shows which of its tensors are complete, so that loading can
start before the last chunk is in.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable

import structlog

from generator.weight_broadcast import BroadcastReceiver
from generator.weight_set import (
    Arrivals,
    WeightFiles,
    WeightSet,
    WeightSetWriter,
    WeightStreamError,
    remove_orphans,
)
from proto.control import Error
from proto.curve import CurveClientKeys
from proto.sockets import Client, SocketLimits
from proto.weights import WeightAnnounce, WeightChunk, WeightRequest

log = structlog.get_logger("generator.weights")

MAX_CHUNK_FRAME_BYTES = 1 << 30  # the publisher chooses the chunk size; take any sane one
_RETRY_CODES = frozenset({"busy", "unavailable", "shutting_down"})


class FetchError(RuntimeError):
    """A version could not be fetched. `code`: the publisher's error code, or timeout / stream."""

    def __init__(self, version: int, code: str, detail: str) -> None:
        super().__init__(f"weights v{version}: {code}: {detail}")
        self.version = version
        self.code = code
        self.detail = detail


def fetch_weights(
    address: str,
    version: int,
    generator_id: str,
    *,
    curve: CurveClientKeys | None = None,
    timeout_s: float = 600.0,
    chunk_timeout_s: float = 60.0,
    announce: WeightAnnounce | None = None,
    cancelled: Callable[[], bool] = lambda: False,
    files: WeightFiles | None = None,
    on_start: Callable[[Arrivals], None] = lambda arrivals: None,
    client: Client | None = None,
    join_broadcast: bool = False,
) -> WeightSet:
    """Download `version` from the publisher at `address`. Raises FetchError.

    `files` lends the file to write into; `on_start` sees each attempt's arrivals as it begins;
    `client` is a connection to `address` to use (and leave open) instead of a new one;
    `join_broadcast` asks to receive the next versions by broadcast.
    """
    if client is None:
        with connect(address, curve) as own:
            return fetch_weights(
                address, version, generator_id, timeout_s=timeout_s, chunk_timeout_s=chunk_timeout_s,
                announce=announce, cancelled=cancelled, files=files, on_start=on_start, client=own,
                join_broadcast=join_broadcast,
            )  # fmt: skip
    deadline = time.monotonic() + timeout_s
    backoff = 0.05
    while True:
        writer = WeightSetWriter(version, announce, files)
        on_start(writer.arrivals)
        try:
            try:
                request = WeightRequest(
                    version=version, generator_id=generator_id, join_broadcast=join_broadcast
                )
                request_id = client.send(request)
            except TimeoutError:
                error: Error | None = Error(code="unavailable", detail=f"no publisher at {address}")
            else:
                error = _receive(client, request_id, writer, deadline, chunk_timeout_s, cancelled)
            if error is None:
                weight_set = writer.finish()
                log.info("weights_fetched", version=version, bytes=writer.bytes_received)
                return weight_set
        except WeightStreamError as exc:
            writer.discard()
            raise FetchError(version, "stream", str(exc)) from None
        except BaseException:
            writer.discard()
            raise
        writer.discard()
        if error.code not in _RETRY_CODES:
            raise FetchError(version, error.code, error.detail)
        if time.monotonic() + backoff > deadline:
            raise FetchError(version, "timeout", f"publisher still answering {error.code}: {error.detail}")
        time.sleep(backoff * random.uniform(0.5, 1.0))
        backoff = min(2.0, backoff * 2)


def connect(address: str, curve: CurveClientKeys | None) -> Client:
    """A connection to the publisher at `address`, as transfers use it."""
    limits = SocketLimits(recv_timeout_ms=1_000, send_timeout_ms=1_000, max_frame_bytes=MAX_CHUNK_FRAME_BYTES)
    return Client(address, curve=curve, limits=limits)


def _receive(
    client: Client,
    request_id: bytes,
    writer: WeightSetWriter,
    deadline: float,
    chunk_timeout_s: float,
    cancelled: Callable[[], bool],
) -> Error | None:
    """Feed the chunks of one request into `writer`; None when the last one arrived."""
    last_progress = time.monotonic()
    while True:
        if cancelled():
            raise FetchError(writer.version, "cancelled", "a newer version is wanted")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise FetchError(
                writer.version, "timeout", f"transfer not complete after {writer.bytes_received} bytes"
            )
        reply = client.recv(timeout_ms=int(min(remaining, chunk_timeout_s, 1.0) * 1000))
        if reply is None:
            if time.monotonic() - last_progress > chunk_timeout_s:
                raise FetchError(writer.version, "timeout", f"no chunk for {chunk_timeout_s:g} s")
            continue
        if reply.request_id != request_id:
            continue  # an answer to an earlier, abandoned request
        message = reply.message
        if isinstance(message, Error):
            return message
        if not isinstance(message, WeightChunk):
            raise FetchError(writer.version, "stream", f"expected weight_chunk, got {message.TYPE}")
        writer.write(message)
        last_progress = time.monotonic()
        if message.last:
            return None


class WeightFetcher:
    """Background downloads: `want(version)` starts one, `take(version)` collects its result."""

    def __init__(
        self,
        generator_id: str,
        *,
        curve: CurveClientKeys | None = None,
        timeout_s: float = 600.0,
        chunk_timeout_s: float = 60.0,
        broadcast: BroadcastReceiver | None = None,
    ) -> None:
        self.generator_id = generator_id
        self.broadcast = broadcast  # the collective path; None: ZeroMQ chunks only
        self.curve = curve
        self.timeout_s = timeout_s
        self.chunk_timeout_s = chunk_timeout_s
        self._lock = threading.Lock()
        self._wanted: tuple[int, str, WeightAnnounce | None] | None = None
        self._results: dict[int, WeightSet | FetchError] = {}
        self._arrivals: dict[int, Arrivals] = {}  # the current attempt of each version in transfer
        self.files = WeightFiles(keep=1)  # the file of the last version, kept for the next
        # Kept from one transfer to the next (a new one costs 20-30 ms); used by the fetch thread
        # only, of which at most one runs at a time.
        self._connection: tuple[str, Client] | None = None
        self._thread: threading.Thread | None = None
        self._closed = False
        for path in remove_orphans():
            log.warning("orphan_weights_removed", path=str(path))

    def want(self, version: int, address: str, announce: WeightAnnounce | None = None) -> None:
        """Fetch `version` unless it (or a newer one) is already wanted or fetched."""
        with self._lock:
            if self._closed or (self._wanted is not None and self._wanted[0] >= version):
                return
            self._wanted = (version, address, announce)
            for old in [v for v in self._results if v < version]:
                self._drop(old)
            for old in [v for v in self._arrivals if v < version]:
                del self._arrivals[old]
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="weight-fetch", daemon=True)
                self._thread.start()

    def arriving(self, version: int) -> Arrivals | None:
        """The tensors of `version` complete so far, while its transfer runs (None: not running)."""
        with self._lock:
            return self._arrivals.get(version)

    def take(self, version: int) -> WeightSet | FetchError | None:
        """The result for `version` once its transfer ended (the caller then owns it), else None.

        A version older than the one wanted now is a FetchError at once: the publisher serves
        only its newest version, so waiting for the older one would wait for nothing.
        """
        with self._lock:
            result = self._results.pop(version, None)
            if result is None and self._wanted is not None and self._wanted[0] > version:
                newer = self._wanted[0]
                return FetchError(version, "superseded", f"v{newer} is announced; only the newest is served")
            if result is not None:
                self._arrivals.pop(version, None)
            if isinstance(result, FetchError) and self._wanted is not None and self._wanted[0] == version:
                self._wanted = None  # a later want() of the same version tries again
            return result

    def _drop(self, version: int) -> None:
        result = self._results.pop(version, None)
        if isinstance(result, WeightSet):
            result.close()

    def _run(self) -> None:
        fetched = -1
        while True:
            with self._lock:
                if self._closed or self._wanted is None or self._wanted[0] <= fetched:
                    self._thread = None
                    return
                version, address, announce = self._wanted
            started = time.monotonic()
            if self._connection is not None and self._connection[0] != address:
                self._drop_connection()
            if self._connection is None:
                self._connection = (address, connect(address, self.curve))
            result: WeightSet | FetchError | None = None
            if self.broadcast is not None and announce is not None and self.broadcast.member_of(announce):
                result = self._receive_broadcast(announce)
            try:
                if result is None:
                    result = fetch_weights(
                        address,
                        version,
                        self.generator_id,
                        curve=self.curve,
                        timeout_s=self.timeout_s,
                        chunk_timeout_s=self.chunk_timeout_s,
                        announce=announce,
                        cancelled=lambda v=version: self._superseded(v),
                        files=self.files,
                        on_start=lambda arrivals: self._started(arrivals),
                        client=self._connection[1],
                        join_broadcast=self.broadcast is not None,
                    )
            except FetchError as exc:
                result = exc
            except Exception as exc:  # a bug or an OS error must reach the worker, not kill the thread
                log.exception("weight_fetch_failed", version=version)
                result = FetchError(version, "internal", f"{type(exc).__name__}: {exc}")
            if isinstance(result, WeightSet) and result.version > version:
                version = result.version  # the group sent a newer version than the one wanted
            fetched = version
            if not isinstance(result, WeightSet):
                # The rest of an abandoned stream may still come: a new connection leaves it behind.
                self._drop_connection()
            log.info(
                "weight_fetch_done",
                version=version,
                ok=isinstance(result, WeightSet),
                seconds=round(time.monotonic() - started, 3),
            )
            with self._lock:
                arrivals = self._arrivals.get(version)
                if self._closed or (self._wanted is not None and self._wanted[0] > version):
                    if isinstance(result, WeightSet):
                        result.close()  # superseded while it downloaded
                    self._arrivals.pop(version, None)
                else:
                    self._results[version] = result
            if arrivals is not None:
                arrivals.end(failed=not isinstance(result, WeightSet))  # wakes a waiting loader

    def _receive_broadcast(self, announce: WeightAnnounce) -> WeightSet | None:
        """The announced version by broadcast; None when that failed (then fetch it as chunks)."""
        assert self.broadcast is not None
        started = time.monotonic()
        try:
            weight_set = self.broadcast.receive(announce, self.files, on_start=self._started)
        except Exception as exc:
            log.warning(
                "broadcast_receive_failed",
                version=announce.version,
                error=f"{type(exc).__name__}: {exc}"[:300],
            )
            with self._lock:
                arrivals = self._arrivals.pop(announce.version, None)
            if arrivals is not None:
                arrivals.end(failed=True)
            return None
        log.info(
            "weights_received",
            version=weight_set.version,
            path="broadcast",
            seconds=round(time.monotonic() - started, 3),
        )
        return weight_set

    def _drop_connection(self) -> None:
        if self._connection is not None:
            self._connection[1].close()
            self._connection = None

    def _started(self, arrivals: Arrivals) -> None:
        with self._lock:
            if not self._closed:
                self._arrivals[arrivals.version] = arrivals

    def _superseded(self, version: int) -> bool:
        with self._lock:
            return self._closed or (self._wanted is not None and self._wanted[0] > version)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for version in list(self._results):
                self._drop(version)
        thread = self._thread
        if thread is not None:
            thread.join(timeout=5)
        if thread is None or not thread.is_alive():
            self._drop_connection()
        self.files.close()
