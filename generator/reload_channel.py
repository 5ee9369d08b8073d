"""A socket of each engine worker's own for the steps of a weight reload.

`collective_rpc` goes through vLLM's engine core, which spin-waits (sched_yield) on the workers'
reply for as long as a call runs; during a reload that arrives in steps it would spin for the
whole transfer, taking a CPU from the fetch and the load (measured: 0.35-0.6 CPU-seconds per
update of 362 MiB on 2 cores, against 0.02-0.06 without). So each worker serves the steps on an
ipc socket from a thread of its own, and the engine core stays asleep. The worker's own loop is
idle meanwhile: the generator never runs the engine during a reload.

Messages are msgpack, never pickle: anyone who can reach the socket file could otherwise run
code in the worker.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import msgpack
import zmq

Step = Callable[[str | None, list[tuple[str, str, list[int], int]], bool, bool], dict[str, float]]


PREFIX = "acerl-reload-"


def remove_stale_sockets() -> list[str]:
    """Delete the socket files of workers that died without closing (their engine was killed)."""
    removed = []
    for name in os.listdir(tempfile.gettempdir()):
        owner = name.removeprefix(PREFIX).split("-", 1)[0]
        if not name.startswith(PREFIX) or not owner.isdigit() or os.path.exists(f"/proc/{owner}"):
            continue
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(tempfile.gettempdir(), name))
            removed.append(name)
    return removed


class ReloadService:
    """Worker side: runs `step(path, layout, begin, end)` for each request, one at a time."""

    def __init__(self, step: Step) -> None:
        remove_stale_sockets()
        self.address = f"ipc://{tempfile.gettempdir()}/{PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._step = step
        self._context = zmq.Context()
        self._socket = self._context.socket(zmq.REP)
        self._socket.bind(self.address)
        os.chmod(self.address.removeprefix("ipc://"), 0o600)
        self._thread = threading.Thread(target=self._serve, name="acerl-reload", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        # vLLM binds a CPU worker to the cores its inference threads compute on (one of two
        # here, the other kept for the engine core). A reload runs while the engine is idle
        # and the engine core asleep, beside the transfer still arriving: it may use any core.
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, range(os.cpu_count() or 1))
        while True:
            path, layout, begin, end = msgpack.unpackb(self._socket.recv())
            try:
                layout = [(name, dtype, list(shape), offset) for name, dtype, shape, offset in layout]
                reply: list[Any] = ["ok", self._step(path, layout, begin, end)]
            except Exception as exc:  # the generator decides what a failed step means
                reply = ["error", f"{type(exc).__name__}: {exc}"]
            self._socket.send(msgpack.packb(reply))


class ReloadChannel:
    """Generator side: one request per worker, every step waits for all of their replies."""

    def __init__(self, addresses: Sequence[str], alive: Callable[[], bool], timeout_s: float = 600.0) -> None:
        self._alive = alive  # False once the engine died: no answer will come
        self._context = zmq.Context()
        self._sockets = []
        self._addresses = list(addresses)
        for address in addresses:
            socket = self._context.socket(zmq.REQ)
            socket.setsockopt(zmq.LINGER, 0)
            socket.connect(address)
            self._sockets.append(socket)
        self.timeout_ms = int(timeout_s * 1000)

    def step(
        self, path: str | None, layout: list[tuple[str, str, list[int], int]], begin: bool, end: bool
    ) -> dict[str, float]:
        """Run one step on every worker; the first worker's seconds by part."""
        request = msgpack.packb([path, layout, begin, end])
        for socket in self._sockets:
            socket.send(request)
        replies = []
        deadline = time.monotonic() + self.timeout_ms / 1000
        for socket in self._sockets:
            while not socket.poll(1000):
                if not self._alive():
                    raise RuntimeError("the engine died during a reload step")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"a reload step got no answer within {self.timeout_ms / 1000:g} s")
            replies.append(msgpack.unpackb(socket.recv()))
        failed = [detail for status, detail in replies if status != "ok"]
        if failed:
            raise RuntimeError(f"reload step failed in a worker: {failed[0]}")
        return replies[0][1]

    def close(self) -> None:
        """Close, and remove the socket files (the workers go with the engine)."""
        for socket in self._sockets:
            socket.close()
        self._context.term()
        for address in self._addresses:
            with contextlib.suppress(OSError):
                os.unlink(address.removeprefix("ipc://"))
