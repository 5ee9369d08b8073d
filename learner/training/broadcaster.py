"""The collective weight path, learner side: each version to every member generator in one broadcast.

Generators ask to join with `WeightRequest(join_broadcast=True)` while they fetch a version over
ZeroMQ (a late joiner or a restarted generator gets the current weights that way first). The
next version's announcement names the group (`BroadcastGroup`): its members and a group id that
changes whenever they do. Rank 0 (here) and the members then form a gloo process group through
this learner's TCPStore, and the version goes out as a `WeightManifest` followed by the tensors'
bytes in buckets, from a background thread: `publish` does not wait for it.

Every collective call has a timeout. When one fails (a member died mid-broadcast, or never came),
the group is dropped and its members with it; the living ones fall back to fetching that version
over ZeroMQ, ask to join again, and the next version forms a new group without the dead one.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time

import structlog
import torch
import torch.distributed as dist
from torch import Tensor

from learner.config import PublishConfig
from proto.collective import broadcast_bytes, process_group, send_manifest, serve_store
from proto.weights import BroadcastGroup, TensorSpec, WeightManifest

log = structlog.get_logger("learner.broadcast")

PENDING = 2  # versions waiting for the broadcast thread; a third publish waits (bounded)


def manifest_of(
    version: int, tensors: dict[str, Tensor], wire_dtypes: dict[torch.dtype, str]
) -> WeightManifest:
    specs = [
        TensorSpec(name=name, dtype=wire_dtypes[tensor.dtype], shape=list(tensor.shape))  # type: ignore[arg-type]
        for name, tensor in tensors.items()
    ]
    return WeightManifest(version=version, tensors=specs)


def send_version(
    pg: dist.ProcessGroup,
    manifest: WeightManifest,
    tensors: dict[str, Tensor],
    bucket_bytes: int,
    timeout_s: float,
) -> None:
    """Rank 0's part of one broadcast: the manifest, then the version in the manifest's layout
    (each tensor at its offset), in buckets."""
    send_manifest(pg, manifest, timeout_s)
    offsets, total = manifest.layout()
    bucket = torch.empty(bucket_bytes, dtype=torch.uint8)
    base = 0  # the layout byte that bucket[0] holds
    for offset, tensor in zip(offsets, tensors.values(), strict=True):
        raw = tensor.detach().contiguous().reshape(-1).view(torch.uint8)
        done = 0
        while done < raw.numel():
            at = offset + done - base
            if at >= bucket_bytes:  # this byte belongs to a later bucket: this one is full
                broadcast_bytes(pg, bucket, timeout_s)
                base += bucket_bytes
                continue
            take = min(bucket_bytes - at, raw.numel() - done)
            bucket[at : at + take] = raw[done : done + take]
            done += take
    for start in range(base, total, bucket_bytes):  # the last bucket (or a gap's)
        size = min(bucket_bytes, total - start)
        broadcast_bytes(pg, bucket if size == bucket_bytes else bucket[:size].clone(), timeout_s)


class WeightBroadcaster:
    """Rank 0's side: who is in the group, and a thread that broadcasts each published version."""

    def __init__(
        self, host: str = "127.0.0.1", *, bucket_bytes: int = 64 << 20, timeout_s: float = 60.0
    ) -> None:
        self.bucket_bytes = bucket_bytes
        self.timeout_s = timeout_s
        self._store, self._listener = serve_store(host, timeout_s)
        self.store_address = f"{host}:{self._store.port}"
        self._lock = threading.Lock()
        self._joining: dict[str, None] = {}  # in the order they asked
        self._members: list[str] = []
        self._group_id = 0
        self._formed: tuple[int, dist.ProcessGroup] | None = None  # the group rank 0 is in now
        self._queue: queue.Queue[tuple[WeightManifest, dict[str, Tensor], BroadcastGroup] | None] = (
            queue.Queue(PENDING)
        )
        self.sent = 0
        self.failed = 0
        self.last_seconds = 0.0
        self._thread = threading.Thread(target=self._run, name="weight-broadcast", daemon=True)
        self._thread.start()

    def join(self, generator_id: str) -> None:
        """`generator_id` asked to receive the next versions by broadcast.

        A member that asks again has left its group (a failed receive, a restart): the next
        version goes to a new group, never to one that waits for a peer gone from it.
        """
        with self._lock:
            self._joining[generator_id] = None

    def plan(self) -> BroadcastGroup | None:
        """The group the next version goes to (None: nobody asked)."""
        with self._lock:
            members = [g for g in self._members if g not in self._joining] + list(self._joining)
            changed = members != self._members or bool(self._joining.keys() & set(self._members))
            self._joining.clear()
            if not members:
                return None
            if changed:
                self._members = members
                self._group_id += 1
            return BroadcastGroup(
                store=self.store_address,
                group_id=self._group_id,
                members=members,
                bucket_bytes=self.bucket_bytes,
            )

    def send(self, manifest: WeightManifest, tensors: dict[str, Tensor], group: BroadcastGroup) -> None:
        """Queue a version for its group (waits only while PENDING versions are still queued)."""
        self._queue.put((manifest, tensors, group), timeout=self.timeout_s)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            manifest, tensors, group = item
            started = time.monotonic()
            try:
                pg = self._group(group)
                send_version(pg, manifest, tensors, group.bucket_bytes, self.timeout_s)
            except Exception as exc:  # a dead or absent member: drop the group, never the learner
                self.failed += 1
                self._drop(group, f"{type(exc).__name__}: {exc}")
                continue
            self.sent += 1
            self.last_seconds = time.monotonic() - started
            log.info(
                "weights_broadcast",
                version=manifest.version,
                group=group.group_id,
                members=len(group.members),
                bytes=manifest.total_bytes,
                seconds=round(self.last_seconds, 3),
            )

    def _group(self, group: BroadcastGroup) -> dist.ProcessGroup:
        if self._formed is not None and self._formed[0] == group.group_id:
            return self._formed[1]
        self._formed = None
        pg = process_group(group, 0, self.timeout_s, self._store)
        self._formed = (group.group_id, pg)
        log.info("broadcast_group_formed", group=group.group_id, members=group.members)
        return pg

    def _drop(self, group: BroadcastGroup, reason: str) -> None:
        self._formed = None
        with self._lock:
            if self._group_id == group.group_id:
                self._members = []  # the living ask again (their fetch over ZeroMQ says so)
        log.warning("broadcast_failed", group=group.group_id, members=group.members, reason=reason[:300])

    def close(self, timeout_s: float = 10.0) -> None:
        with contextlib.suppress(queue.Full):
            self._queue.put(None, timeout=timeout_s)
        self._thread.join(timeout_s)


def broadcaster_of(publish: PublishConfig) -> WeightBroadcaster | None:
    """The broadcaster `publish` asks for, if it does."""
    if not publish.broadcast:
        return None
    bucket_bytes, timeout_s = publish.broadcast_bucket_mb << 20, publish.broadcast_timeout_s
    return WeightBroadcaster(publish.broadcast_host, bucket_bytes=bucket_bytes, timeout_s=timeout_s)
