"""Base class and registry for every message that crosses a process boundary.

A message is a strict pydantic model: unknown fields, missing fields and wrong types are
rejected with the field's name. Each concrete message names itself with a `TYPE` string, which
the codec writes on the wire next to the protocol version.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, PlainSerializer, PlainValidator

# Bump on any change of a message's fields, or of what the bytes that follow one mean; peers of
# different versions refuse each other.
PROTOCOL_VERSION = 6

REGISTRY: dict[str, type[Message]] = {}


class Struct(BaseModel):
    """A strict record: a part of a message, or a message itself (see `Message`)."""

    model_config = ConfigDict(
        strict=True, extra="forbid", arbitrary_types_allowed=True, allow_inf_nan=False, frozen=True
    )

    def __eq__(self, other: object) -> bool:
        # Arrays make pydantic's field-wise == ambiguous; compare the serialised form instead.
        return type(self) is type(other) and self.model_dump() == other.model_dump()  # type: ignore[union-attr]

    __hash__ = None  # type: ignore[assignment]


class Message(Struct):
    """A top-level message. Subclasses set `TYPE`, which registers them with the codec."""

    TYPE: ClassVar[str]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        type_name = cls.__dict__.get("TYPE")
        if type_name is None:
            return
        if type_name in REGISTRY:
            raise TypeError(f"message type {type_name!r} is defined twice")
        REGISTRY[type_name] = cls


def _array_type(dtype: type[np.generic]) -> Any:
    """A 1-D numpy array of one dtype, carried on the wire as raw little-endian bytes."""
    np_dtype = np.dtype(dtype).newbyteorder("<")

    def validate(value: Any) -> np.ndarray:
        if isinstance(value, np.ndarray):
            if value.ndim != 1:
                raise ValueError(f"expected a 1-D array, got {value.ndim} dimensions")
            if value.dtype != np_dtype:
                if not np.can_cast(value.dtype, np_dtype, casting="same_kind"):
                    raise ValueError(f"expected {np_dtype.name} values, got {value.dtype.name}")
                value = value.astype(np_dtype)
            return value
        if isinstance(value, (bytes, bytearray, memoryview)):
            if len(value) % np_dtype.itemsize:
                raise ValueError(f"{len(value)} bytes is not a whole number of {np_dtype.name} values")
            return np.frombuffer(value, dtype=np_dtype)
        if isinstance(value, list):
            kind = int if np_dtype.kind == "i" else (int, float)
            if not all(isinstance(v, kind) and not isinstance(v, bool) for v in value):
                raise ValueError(f"expected a list of {np_dtype.name} values")
            return np.asarray(value, dtype=np_dtype)
        raise ValueError(f"expected {np_dtype.name} array, bytes or list, got {type(value).__name__}")

    def serialize(value: np.ndarray) -> memoryview:
        return memoryview(np.ascontiguousarray(value)).cast("B")  # no copy; the codec packs it

    return Annotated[np.ndarray, PlainValidator(validate), PlainSerializer(serialize)]


def _blob(value: Any) -> bytes | memoryview:
    if isinstance(value, bytes):
        return value
    if isinstance(value, (bytearray, memoryview)):
        # Received out-of-band frames arrive as memoryviews of the socket's buffer: no copy.
        return memoryview(value).cast("B")
    raise ValueError(f"expected bytes, got {type(value).__name__}")


# Raw bytes, possibly a view of a received frame. Large blobs travel in frames of their own.
Blob = Annotated[bytes | memoryview, PlainValidator(_blob), PlainSerializer(lambda value: value)]

Int32Array = _array_type(np.int32)
Float32Array = _array_type(np.float32)
