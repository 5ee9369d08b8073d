"""msgpack encoding of messages, and the strict decoder every receiver uses.

A frame is the msgpack array `[PROTOCOL_VERSION, TYPE, {field: value}]`. Decoding never raises
anything but `ProtocolError`, whose `field` names what was wrong, so a receiver can answer the
sender with a clear error and keep serving.
"""

from __future__ import annotations

from typing import Any

import msgpack
from pydantic import ValidationError

from proto.message import PROTOCOL_VERSION, REGISTRY, Message

# Large enough for one weight chunk plus headroom; receivers may configure it.
DEFAULT_MAX_FRAME_BYTES = 64 * 1024 * 1024


class ProtocolError(ValueError):
    """A frame that is not a valid message. `field` says where: a path or 'frame'/'type'/..."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


def encode(message: Message) -> bytes:
    return msgpack.packb([PROTOCOL_VERSION, message.TYPE, message.model_dump()], use_bin_type=True)


def decode(frame: bytes | memoryview, max_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> Message:
    """Parse and validate one frame, or raise `ProtocolError`."""
    if len(frame) > max_bytes:
        raise ProtocolError("frame", f"{len(frame)} bytes exceeds the limit of {max_bytes} bytes")
    try:
        envelope: Any = msgpack.unpackb(frame, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types for hostile input
        raise ProtocolError("frame", f"not a msgpack document ({type(exc).__name__}: {exc})") from None
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
