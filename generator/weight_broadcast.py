"""The collective weight path, generator side: a version received by broadcast into a WeightSet.

A generator with `weight_transfer=broadcast` asks to join while it fetches a version over ZeroMQ;
when an announcement then names it in its `BroadcastGroup`, it joins that group (or keeps the one
it is in) and receives the `WeightManifest` and the bytes that follow. The bytes go through the
same `WeightSetWriter` as chunks over ZeroMQ do, so the engine loads them the same way and sees
each tensor as soon as it is complete. The learner lays the version out as the weight file is
laid out, so each bucket is received in place, with no copy. Any failure (a timeout, a dead
peer) drops the group: the caller then fetches the version over ZeroMQ and asks to join again.
"""

from __future__ import annotations

from collections.abc import Callable

import structlog
import torch
import torch.distributed as dist

from generator.weight_set import Arrivals, WeightFiles, WeightSet, WeightSetWriter
from proto.collective import broadcast_bytes, process_group, receive_manifest
from proto.weights import WeightAnnounce, WeightManifest

log = structlog.get_logger("generator.broadcast")


class BroadcastReceiver:
    def __init__(self, generator_id: str, timeout_s: float = 60.0) -> None:
        self.generator_id = generator_id
        self.timeout_s = timeout_s
        self._formed: tuple[int, dist.ProcessGroup] | None = None

    def member_of(self, announce: WeightAnnounce) -> bool:
        return announce.group is not None and self.generator_id in announce.group.members

    def receive(
        self,
        announce: WeightAnnounce,
        files: WeightFiles | None = None,
        on_start: Callable[[Arrivals], None] = lambda arrivals: None,
    ) -> WeightSet:
        """The version `announce` names (or a newer one the group sent instead); raises on failure."""
        group = announce.group
        assert group is not None and self.member_of(announce)
        try:
            if self._formed is None or self._formed[0] != group.group_id:
                self._formed = None
                rank = group.members.index(self.generator_id) + 1
                self._formed = (group.group_id, process_group(group, rank, self.timeout_s))
                log.info(
                    "broadcast_group_joined", group=group.group_id, rank=rank, members=len(group.members)
                )
            pg = self._formed[1]
            while True:
                manifest = receive_manifest(pg, self.timeout_s)
                writer = WeightSetWriter(manifest.version, announce, files)
                on_start(writer.arrivals)
                try:
                    self._receive_into(pg, manifest, writer, group.bucket_bytes)
                except BaseException:
                    writer.discard()
                    raise
                if manifest.version >= announce.version:
                    return writer.finish()
                writer.discard()  # an older version still going out when this one was announced
        except BaseException:
            self._formed = None
            raise

    def _receive_into(
        self, pg: dist.ProcessGroup, manifest: WeightManifest, writer: WeightSetWriter, bucket_bytes: int
    ) -> None:
        """Receive the buckets straight into the weight file: the learner sends its layout."""
        total = writer.lay_out(manifest)
        for start in range(0, total, bucket_bytes):
            size = min(bucket_bytes, total - start)
            bucket = torch.frombuffer(writer.view(start, size), dtype=torch.uint8)
            broadcast_bytes(pg, bucket, self.timeout_s)
            del bucket  # the file may not grow or close while a view of it is held
            writer.filled_to(start + size)
