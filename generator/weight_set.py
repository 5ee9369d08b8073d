"""One policy version's tensors, reassembled from WeightChunks into a shared-memory file.

The fetcher writes each chunk's bytes straight into a memory-mapped file (in /dev/shm when the
machine has it), so the engine's worker processes can map the same pages and load from them:
the weights cross from the generator to the engine without being pickled or copied again.
"""

from __future__ import annotations

import contextlib
import math
import mmap
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from proto.weights import DTYPE_BYTES, WeightAnnounce, WeightChunk

ALIGN = 64  # tensor starts in the file, for aligned copies


class WeightStreamError(ValueError):
    """The chunk stream of a version is inconsistent (order, shapes, overlaps, missing bytes)."""


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: str
    shape: tuple[int, ...]
    offset: int  # in the file
    nbytes: int


@dataclass
class WeightSet:
    """A complete version in a file; `entries` say where each tensor lies. Close to delete the file."""

    version: int
    path: Path
    entries: list[TensorEntry]
    total_bytes: int
    _closed: bool = field(default=False, repr=False)

    def tensors(self) -> Iterator[tuple[str, object]]:
        """(name, torch tensor viewing the file) pairs, for loading in this process."""
        import torch

        from generator.weight_loader import TORCH_DTYPES

        with open(self.path, "r+b") as handle:
            mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_COPY) if self.total_bytes else b""
        for entry in self.entries:
            dtype = TORCH_DTYPES[entry.dtype]
            count = entry.nbytes // DTYPE_BYTES[entry.dtype]
            if count == 0:
                yield entry.name, torch.empty(entry.shape, dtype=dtype)
                continue
            flat = torch.frombuffer(mapped, dtype=dtype, count=count, offset=entry.offset)
            yield entry.name, flat.view(entry.shape)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()


PREFIX = "acerl-weights-"


def _shm_dir() -> str:
    shm = Path("/dev/shm")
    return str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else tempfile.gettempdir()


def file_prefix(version: int, pid: int | None = None) -> str:
    """Files are named after the process that writes them, so that orphans can be recognised."""
    return f"{PREFIX}{os.getpid() if pid is None else pid}-v{version}-"


def remove_orphans() -> list[Path]:
    """Delete weight files left by processes that no longer run (a SIGKILL mid-transfer)."""
    removed = []
    for path in Path(_shm_dir()).glob(f"{PREFIX}*"):
        owner = path.name.removeprefix(PREFIX).split("-", 1)[0]
        if not owner.isdigit() or Path(f"/proc/{owner}").exists():
            continue
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed.append(path)
    return removed


class WeightSetWriter:
    """Takes a version's chunks in `seq` order and checks the stream as it goes."""

    def __init__(self, version: int, announce: WeightAnnounce | None = None) -> None:
        self.version = version
        self.announce = announce if announce is not None and announce.version == version else None
        fd, name = tempfile.mkstemp(prefix=file_prefix(version), dir=_shm_dir())
        self.path = Path(name)
        self._file = os.fdopen(fd, "r+b")
        self._capacity = 0
        self._map: mmap.mmap | None = None
        self._entries: dict[str, TensorEntry] = {}
        self._filled: dict[str, int] = {}
        self._end = 0
        self._next_seq = 0
        self.bytes_received = 0
        hint = self.announce.total_bytes + ALIGN * self.announce.num_tensors if self.announce else 0
        self._grow(max(hint, 1 << 20))

    def _grow(self, needed: int) -> None:
        if needed <= self._capacity:
            return
        capacity = max(needed, 2 * self._capacity)
        self._file.truncate(capacity)
        if self._map is None:
            self._map = mmap.mmap(self._file.fileno(), capacity)
        else:
            self._map.resize(capacity)
        self._capacity = capacity

    def write(self, chunk: WeightChunk) -> None:
        if chunk.version != self.version:
            raise WeightStreamError(f"chunk {chunk.seq} is of version {chunk.version}, not {self.version}")
        if chunk.seq != self._next_seq:
            raise WeightStreamError(f"chunk {chunk.seq} arrived where chunk {self._next_seq} was due")
        self._next_seq += 1
        shape = tuple(chunk.shape)
        entry = self._entries.get(chunk.name)
        if entry is None:
            if chunk.offset != 0:
                raise WeightStreamError(f"{chunk.name}: first chunk starts at byte {chunk.offset}, not 0")
            nbytes = math.prod(shape) * DTYPE_BYTES[chunk.dtype]
            start = -(-self._end // ALIGN) * ALIGN
            entry = TensorEntry(chunk.name, chunk.dtype, shape, start, nbytes)
            self._grow(start + nbytes)
            self._entries[chunk.name] = entry
            self._filled[chunk.name] = 0
            self._end = start + nbytes
        elif (entry.dtype, entry.shape) != (chunk.dtype, shape):
            raise WeightStreamError(
                f"{chunk.name}: chunk {chunk.seq} says {chunk.dtype}{list(shape)}, "
                f"earlier chunks {entry.dtype}{list(entry.shape)}"
            )
        filled = self._filled[chunk.name]
        if chunk.offset != filled:
            raise WeightStreamError(f"{chunk.name}: chunk at byte {chunk.offset}, expected byte {filled}")
        data = memoryview(chunk.data).cast("B")
        if filled + data.nbytes > entry.nbytes:
            raise WeightStreamError(f"{chunk.name}: bytes overrun the tensor's {entry.nbytes}")
        assert self._map is not None
        self._map[entry.offset + filled : entry.offset + filled + data.nbytes] = data
        self._filled[chunk.name] = filled + data.nbytes
        self.bytes_received += data.nbytes

    def finish(self) -> WeightSet:
        missing = [name for name, entry in self._entries.items() if self._filled[name] != entry.nbytes]
        if missing:
            raise WeightStreamError(f"the stream ended with tensors incomplete: {missing[:5]}")
        if (
            self.announce is not None
            and self.announce.num_tensors
            and (
                len(self._entries) != self.announce.num_tensors
                or self.bytes_received != self.announce.total_bytes
            )
        ):
            raise WeightStreamError(
                f"received {len(self._entries)} tensors / {self.bytes_received} bytes, announced "
                f"{self.announce.num_tensors} / {self.announce.total_bytes}"
            )
        if not self._entries:
            raise WeightStreamError("the stream held no tensors")
        assert self._map is not None
        self._map.close()
        self._file.truncate(max(self._end, 1))
        self._file.close()
        return WeightSet(self.version, self.path, list(self._entries.values()), self._end)

    def discard(self) -> None:
        if self._map is not None:
            with contextlib.suppress(BufferError, ValueError):
                self._map.close()
        self._file.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
