"""The collective weight path's transport: a gloo process group of the learner's rank 0 and the
generators named by a `BroadcastGroup`, and a broadcast with a deadline.

The group is made directly from a store (not through `torch.distributed.init_process_group`), so
a process that is already in another group (a learner rank under torchrun) can be in it too, and
a new group can be made whenever the members change. Who sends what is in `proto/weights.py`:
a `WeightManifest`, then the tensors' bytes in buckets.
"""

from __future__ import annotations

import socket
from datetime import timedelta

import torch
import torch.distributed as dist

from proto.codec import decode, encode
from proto.weights import BroadcastGroup, WeightManifest

MAX_MANIFEST_BYTES = 256 << 20


def serve_store(host: str, timeout_s: float) -> tuple[dist.TCPStore, socket.socket]:
    """Rank 0's store, listening on `host` only (a TCPStore alone would listen on every
    interface: on a node whose generators are local, nothing leaves loopback)."""
    listener = socket.create_server((host, 0), backlog=1024)
    store = dist.TCPStore(
        host,
        listener.getsockname()[1],
        is_master=True,
        wait_for_workers=False,
        timeout=timedelta(seconds=timeout_s),
        master_listen_fd=listener.fileno(),
    )
    return store, listener


def process_group(
    group: BroadcastGroup, rank: int, timeout_s: float, store: dist.Store | None = None
) -> dist.ProcessGroup:
    """Join `group` as `rank` and wait for every other rank; raises RuntimeError after `timeout_s`.

    Rank 0 passes its own store (it serves it); the others connect to `group.store`. With the
    store on loopback, gloo's connections stay on loopback too.
    """
    timeout = timedelta(seconds=timeout_s)
    host, _, port = group.store.rpartition(":")
    if store is None:
        store = dist.TCPStore(host, int(port), is_master=False, timeout=timeout)
    prefixed = dist.PrefixStore(f"weights-{group.group_id}", store)
    options = dist.ProcessGroupGloo._Options()
    options._timeout = timeout
    loopback = host in ("localhost", "127.0.0.1", "::1")
    device = (
        dist.ProcessGroupGloo.create_device(hostname=host)
        if loopback
        else dist.ProcessGroupGloo.create_default_device()
    )
    options._devices = [device]
    return dist.ProcessGroupGloo(prefixed, rank, len(group.members) + 1, options)


def broadcast_bytes(pg: dist.ProcessGroup, data: torch.Tensor, timeout_s: float) -> None:
    """Broadcast a uint8 tensor from rank 0: sent there, received into `data` everywhere else."""
    options = dist.BroadcastOptions()
    options.rootRank = 0
    work = pg.broadcast([data], options)
    if not work.wait(timedelta(seconds=timeout_s)):
        raise RuntimeError(f"broadcast of {data.numel()} bytes did not finish within {timeout_s:g} s")


def send_manifest(pg: dist.ProcessGroup, manifest: WeightManifest, timeout_s: float) -> None:
    header = b"".join(bytes(frame) for frame in encode(manifest))
    size = torch.tensor(list(len(header).to_bytes(8, "little")), dtype=torch.uint8)
    broadcast_bytes(pg, size, timeout_s)
    broadcast_bytes(pg, torch.frombuffer(bytearray(header), dtype=torch.uint8), timeout_s)


def receive_manifest(pg: dist.ProcessGroup, timeout_s: float) -> WeightManifest:
    size = torch.zeros(8, dtype=torch.uint8)
    broadcast_bytes(pg, size, timeout_s)
    length = int.from_bytes(bytes(size.tolist()), "little")
    if not 0 < length <= MAX_MANIFEST_BYTES:
        raise ValueError(f"a weight manifest of {length} bytes")
    header = torch.zeros(length, dtype=torch.uint8)
    broadcast_bytes(pg, header, timeout_s)
    manifest = decode([header.numpy().tobytes()], MAX_MANIFEST_BYTES)
    if not isinstance(manifest, WeightManifest):
        raise ValueError(f"expected a weight_manifest, got {manifest.TYPE}")
    return manifest
