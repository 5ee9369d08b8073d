"""Files of rollout groups: each record a 4-byte big-endian length, then one proto frame."""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from pathlib import Path

from proto.codec import ProtocolError, decode, encode
from proto.rollout import RolloutGroup

_LENGTH = struct.Struct(">I")


def write_groups(path: Path, groups: Iterable[RolloutGroup]) -> int:
    count = 0
    with path.open("wb") as f:
        for group in groups:
            frame = encode(group)
            f.write(_LENGTH.pack(len(frame)))
            f.write(frame)
            count += 1
    return count


def read_groups(path: Path) -> Iterator[RolloutGroup]:
    """Yields every group; a damaged record raises ValueError naming its index and field."""
    with path.open("rb") as f:
        index = 0
        while header := f.read(_LENGTH.size):
            if len(header) < _LENGTH.size:
                raise ValueError(f"{path}: record {index}: truncated length header")
            (size,) = _LENGTH.unpack(header)
            frame = f.read(size)
            if len(frame) < size:
                raise ValueError(f"{path}: record {index}: {len(frame)} of {size} bytes")
            try:
                message = decode(frame)
            except ProtocolError as exc:
                raise ValueError(f"{path}: record {index}: {exc}") from None
            if not isinstance(message, RolloutGroup):
                raise ValueError(f"{path}: record {index}: expected rollout_group, got {message.TYPE}")
            yield message
            index += 1
