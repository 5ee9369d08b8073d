"""Files of rollout groups. A record: uint32 frame count, then per frame a uint32 length and the
frame's bytes (a message's proto frames, as `proto.codec.encode` makes them); big-endian."""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from proto.codec import ProtocolError, decode, encode
from proto.rollout import RolloutGroup

_U32 = struct.Struct(">I")
MAX_FRAMES = 1024


def write_groups(path: Path, groups: Iterable[RolloutGroup]) -> int:
    count = 0
    with path.open("wb") as f:
        for group in groups:
            frames = encode(group)
            f.write(_U32.pack(len(frames)))
            for frame in frames:
                view = memoryview(frame).cast("B")
                f.write(_U32.pack(view.nbytes))
                f.write(view)
            count += 1
    return count


def _read_u32(f: BinaryIO, what: str) -> int | None:
    header = f.read(_U32.size)
    if not header:
        return None
    if len(header) < _U32.size:
        raise ValueError(f"truncated {what}")
    return _U32.unpack(header)[0]


def read_groups(path: Path) -> Iterator[RolloutGroup]:
    """Yields every group; a damaged record raises ValueError naming its index and field."""
    with path.open("rb") as f:
        index = 0
        while True:
            try:
                count = _read_u32(f, "frame count")
                if count is None:
                    return
                if not 1 <= count <= MAX_FRAMES:
                    raise ValueError(f"frame count {count} out of range")
                frames = []
                for _ in range(count):
                    size = _read_u32(f, "frame length")
                    frame = f.read(size or 0)
                    if size is None or len(frame) < size:
                        raise ValueError("truncated frame")
                    frames.append(frame)
                message = decode(frames)
            except (ValueError, ProtocolError) as exc:
                raise ValueError(f"{path}: record {index}: {exc}") from None
            if not isinstance(message, RolloutGroup):
                raise ValueError(f"{path}: record {index}: expected rollout_group, got {message.TYPE}")
            yield message
            index += 1
