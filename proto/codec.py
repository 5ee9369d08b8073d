"""msgpack encoding of messages, and the strict decoder every receiver uses.

A message travels as one or more frames. The first is the msgpack array
`[PROTOCOL_VERSION, TYPE, {field: value}]`; every bytes value of `OUT_OF_BAND_BYTES` or more
(weight chunks, long token arrays) is replaced there by a reference to a frame of its own, so
that ZeroMQ sends it without copying and the receiver reads it in place. Decoding never raises
anything but `ProtocolError`, whose `field` names what was wrong, so a receiver can answer the
sender with a clear error and keep serving.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

import msgpack
from pydantic import ValidationError

from proto.message import PROTOCOL_VERSION, REGISTRY, Message

# Large enough for one weight chunk plus headroom; receivers may configure it.
DEFAULT_MAX_FRAME_BYTES = 64 * 1024 * 1024
OUT_OF_BAND_BYTES = 64 * 1024
_EXT_FRAME = 1  # msgpack extension type: "the bytes are in frame number <uint32>"

Buffer = bytes | bytearray | memoryview


class ProtocolError(ValueError):
    """A frame that is not a valid message. `field` says where: a path or 'frame'/'type'/..."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


def encode(message: Message) -> list[Buffer]:
    """The frames of `message`: the msgpack envelope, then any out-of-band byte buffers."""
    buffers: list[Buffer] = []

    def lift(value: Any) -> Any:
        if isinstance(value, dict):
            return {key: lift(item) for key, item in value.items()}
        if isinstance(value, list):
            return [lift(item) for item in value]
        if isinstance(value, (bytes, memoryview)) and memoryview(value).nbytes >= OUT_OF_BAND_BYTES:
            buffers.append(value)
            return msgpack.ExtType(_EXT_FRAME, struct.pack("<I", len(buffers)))
        return value

    envelope = msgpack.packb([PROTOCOL_VERSION, message.TYPE, lift(message.model_dump())], use_bin_type=True)
    return [envelope, *buffers]


def decode(frames: Buffer | Sequence[Buffer], max_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> Message:
    """Parse and validate one message (its frames, or a single frame), or raise `ProtocolError`."""
    if isinstance(frames, (bytes, bytearray, memoryview)):
        frames = [frames]
    if not frames:
        raise ProtocolError("frame", "no frames")
    size = sum(memoryview(frame).nbytes for frame in frames)
    if size > max_bytes:
        raise ProtocolError("frame", f"{size} bytes exceeds the limit of {max_bytes} bytes")
    used: set[int] = set()

    def frame_ref(code: int, data: bytes) -> Any:
        if code != _EXT_FRAME or len(data) != 4:
            raise ValueError(f"unknown msgpack extension type {code}")
        (index,) = struct.unpack("<I", data)
        if not 1 <= index < len(frames) or index in used:
            raise ValueError(f"reference to frame {index} of {len(frames)}")
        used.add(index)
        return memoryview(frames[index]).cast("B")

    try:
        envelope: Any = msgpack.unpackb(frames[0], raw=False, strict_map_key=True, ext_hook=frame_ref)
    except Exception as exc:  # msgpack raises several unrelated types for hostile input
        raise ProtocolError("frame", f"not a msgpack document ({type(exc).__name__}: {exc})") from None
    if len(used) != len(frames) - 1:
        raise ProtocolError(
            "frame", f"{len(frames) - 1 - len(used)} frames are not referenced by the message"
        )
    if not isinstance(envelope, list) or len(envelope) != 3:
        raise ProtocolError("frame", "expected the array [protocol_version, type, body]")
    version, type_name, body = envelope
    if type(version) is not int:
        raise ProtocolError("protocol_version", f"expected an integer, got {type(version).__name__}")
    if version != PROTOCOL_VERSION:
        raise ProtocolError(
            "protocol_version", f"peer speaks version {version}, this side speaks {PROTOCOL_VERSION}"
        )
    if not isinstance(type_name, str):
        raise ProtocolError("type", f"expected a string, got {type(type_name).__name__}")
    cls = REGISTRY.get(type_name)
    if cls is None:
        raise ProtocolError("type", f"unknown message type {type_name[:64]!r}")
    if not isinstance(body, dict):
        raise ProtocolError(type_name, f"expected a map of fields, got {type(body).__name__}")
    try:
        return cls.model_validate(body)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        path = ".".join(str(part) for part in first["loc"])
        field = f"{type_name}.{path}" if path else type_name
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise ProtocolError(field, f"{first['msg']}{more}") from None
