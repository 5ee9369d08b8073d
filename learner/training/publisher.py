"""Serves each new policy version to generators as `WeightChunk`s, from a background thread.

`publish(version, tensors)` only swaps in the snapshot (the caller hands over a CPU copy it will
not touch again) and returns the `WeightAnnounce`, so the next learner step starts at once.
The serving thread owns the ROUTER socket: a `WeightRequest(version)` for the current version
is answered with the chunks of every tensor on that request id, in `seq` order, the final one
with `last=True`. Several transfers are interleaved one chunk at a time. An older version gets
`Error(not_found)`, a newer one `Error(unavailable)`, a transfer over `max_streams` `Error(busy)`.
"""

from __future__ import annotations

import math
import queue
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import structlog
import torch
from torch import Tensor

from learner.training.broadcaster import WeightBroadcaster, manifest_of
from proto.curve import CurveServerKeys
from proto.sockets import Request, Server, SocketLimits
from proto.weights import DTYPES, DType, WeightAnnounce, WeightChunk, WeightRequest, torch_dtype

log = structlog.get_logger("learner.publisher")

TORCH_DTYPES: dict[torch.dtype, DType] = {torch_dtype(name): name for name in DTYPES}


def raw_bytes(tensor: Tensor) -> memoryview:
    """The tensor's bytes, little-endian, without a copy (bfloat16 as its 16-bit pattern)."""
    flat = tensor.detach().contiguous().reshape(-1)
    if flat.dtype == torch.bfloat16:
        flat = flat.view(torch.int16)
    return memoryview(flat.numpy().view(np.uint8))


def weight_chunks(tensors: Mapping[str, Tensor], version: int, chunk_bytes: int) -> Iterator[WeightChunk]:
    if not tensors:
        raise ValueError("tensors: a version needs at least one tensor")
    names = list(tensors)
    seq = 0
    for index, name in enumerate(names):
        tensor = tensors[name]
        if tensor.dtype not in TORCH_DTYPES:
            raise ValueError(f"{name}: dtype {tensor.dtype} has no wire format")
        data = raw_bytes(tensor)
        offsets = range(0, len(data), chunk_bytes) if len(data) else range(1)
        for offset in offsets:
            end = min(offset + chunk_bytes, len(data))
            yield WeightChunk(
                version=version,
                seq=seq,
                name=name,
                dtype=TORCH_DTYPES[tensor.dtype],
                shape=list(tensor.shape),
                offset=offset,
                data=data[offset:end],  # a view of the snapshot: no copy
                last=index == len(names) - 1 and end == len(data),
            )
            seq += 1


@dataclass
class _Snapshot:
    version: int
    tensors: dict[str, Tensor]
    announce: WeightAnnounce


@dataclass
class _Stream:
    request: Request
    version: int
    chunks: Iterator[WeightChunk]
    sent: int = 0


class WeightPublisher:
    def __init__(
        self,
        address: str = "tcp://127.0.0.1:*",
        *,
        chunk_bytes: int = 4 * 1024 * 1024,
        max_streams: int = 16,
        send_timeout_s: float = 60.0,
        curve: CurveServerKeys | None = None,
        start_timeout_s: float = 10.0,
        broadcaster: WeightBroadcaster | None = None,
    ) -> None:
        self.chunk_bytes = chunk_bytes
        self.broadcaster = broadcaster  # the collective path, for the generators that join it
        self.max_streams = max_streams
        self.transfers_done = 0
        self._limits = SocketLimits(
            send_timeout_ms=int(send_timeout_s * 1000),
            hwm=max(4, (256 * 1024 * 1024) // chunk_bytes),  # bounds the bytes queued per peer
            max_frame_bytes=max(chunk_bytes * 2, 1024 * 1024),
        )
        self._latest: _Snapshot | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.address = ""
        self._thread = threading.Thread(
            target=self._serve, args=(address, curve), name="weight-publisher", daemon=True
        )
        self._thread.start()
        if not self._ready.wait(start_timeout_s):
            raise TimeoutError(f"weight publisher: not bound to {address} within {start_timeout_s} s")
        if self._error is not None:
            raise self._error

    def publish(self, version: int, tensors: dict[str, Tensor]) -> WeightAnnounce:
        """Make `version` the one served. `tensors` is taken over: do not modify it afterwards."""
        if not tensors:
            raise ValueError("tensors: a version needs at least one tensor")
        for name, tensor in tensors.items():
            if tensor.device.type != "cpu":
                raise ValueError(f"{name}: publish CPU tensors (got {tensor.device})")
            if tensor.dtype not in TORCH_DTYPES:
                raise ValueError(f"{name}: dtype {tensor.dtype} has no wire format")
        total = sum(math.prod(t.shape) * DTYPES[TORCH_DTYPES[t.dtype]].itemsize for t in tensors.values())
        with self._lock:
            if self._latest is not None and version <= self._latest.version:
                raise ValueError(f"version: {version} is not newer than {self._latest.version}")
        group = self.broadcaster.plan() if self.broadcaster is not None else None
        announce = WeightAnnounce(
            version=version, num_tensors=len(tensors), total_bytes=total, address=self.address, group=group
        )
        with self._lock:
            self._latest = _Snapshot(version, tensors, announce)
        if group is not None:
            assert self.broadcaster is not None
            try:
                self.broadcaster.send(manifest_of(version, tensors, TORCH_DTYPES), tensors, group)
            except queue.Full:  # its members time out and fetch chunks instead
                log.warning("broadcast_skipped", version=version, reason="earlier broadcasts still queued")
        log.info(
            "weights_published",
            version=version,
            tensors=len(tensors),
            bytes=total,
            broadcast=group is not None,
        )
        return announce

    @property
    def announcement(self) -> WeightAnnounce | None:
        with self._lock:
            return None if self._latest is None else self._latest.announce

    def _serve(self, address: str, curve: CurveServerKeys | None) -> None:
        try:
            server = Server(address, curve=curve, limits=self._limits, name="weight-publisher")
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            return
        self.address = server.address
        self._ready.set()
        streams: list[_Stream] = []
        try:
            while not self._stop.is_set():
                request = server.recv(timeout_ms=0 if streams else 50)
                if request is not None:
                    self._accept(server, request, streams)
                for stream in list(streams):  # one chunk per transfer per turn
                    try:
                        chunk = next(stream.chunks)
                    except Exception as exc:  # a broken transfer must not stop the others
                        log.exception("transfer_failed", version=stream.version, sent=stream.sent)
                        server.reply_error(stream.request, "internal", f"weight transfer failed: {exc}")
                        streams.remove(stream)
                        continue
                    if not server.send(stream.request.peer, chunk, stream.request.request_id):
                        log.warning("transfer_dropped", version=stream.version, sent=stream.sent)
                        streams.remove(stream)
                        continue
                    stream.sent += 1
                    if chunk.last:
                        streams.remove(stream)
                        self.transfers_done += 1
                        log.info("transfer_done", version=stream.version, chunks=stream.sent)
        finally:
            server.close()

    def _accept(self, server: Server, request: Request, streams: list[_Stream]) -> None:
        message = request.message
        if not isinstance(message, WeightRequest):
            server.reply_error(request, "bad_request", f"expected weight_request, got {message.TYPE}")
            return
        if message.join_broadcast and self.broadcaster is not None:
            self.broadcaster.join(message.generator_id)
        with self._lock:
            latest = self._latest
        if latest is None or message.version > latest.version:
            have = "none" if latest is None else latest.version
            server.reply_error(
                request, "unavailable", f"version {message.version} not published yet (latest {have})"
            )
        elif message.version < latest.version:
            server.reply_error(
                request, "not_found", f"version {message.version} superseded by {latest.version}"
            )
        elif len(streams) >= self.max_streams:
            server.reply_error(request, "busy", f"{len(streams)} transfers in progress; retry")
        else:
            log.info("transfer_start", version=latest.version, generator=message.generator_id)
            streams.append(
                _Stream(
                    request, latest.version, weight_chunks(latest.tensors, latest.version, self.chunk_bytes)
                )
            )

    def close(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        self._thread.join(timeout_s)
        if self.broadcaster is not None:
            self.broadcaster.close(timeout_s)

    def __enter__(self) -> WeightPublisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
