"""Weight publication: an announcement of a new policy version, then its tensors in chunks."""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from proto.message import Blob, Message

DType = Literal["float32", "float16", "bfloat16", "float64", "int64", "int32", "uint8"]
DTYPE_BYTES: dict[str, int] = {
    "float32": 4,
    "float16": 2,
    "bfloat16": 2,
    "float64": 8,
    "int64": 8,
    "int32": 4,
    "uint8": 1,
}


class WeightAnnounce(Message):
    """Version `version` is ready; fetch it with WeightRequest from `address` (empty: same peer)."""

    TYPE = "weight_announce"

    version: int = Field(ge=0)
    num_tensors: int = Field(ge=0)
    total_bytes: int = Field(ge=0)
    address: str = ""


class WeightRequest(Message):
    TYPE = "weight_request"

    version: int = Field(ge=0)
    generator_id: str = Field(min_length=1, max_length=256)


class WeightChunk(Message):
    """Bytes `[offset, offset + len(data))` of one tensor. Large tensors span several chunks."""

    TYPE = "weight_chunk"

    version: int = Field(ge=0)
    seq: int = Field(ge=0)  # position of this chunk in the stream of its version
    name: str = Field(min_length=1, max_length=1024)
    dtype: DType
    shape: list[int]
    offset: int = Field(ge=0)
    data: Blob
    last: bool  # the final chunk of the version

    @model_validator(mode="after")
    def _fits(self) -> WeightChunk:
        if any(d < 0 for d in self.shape):
            raise ValueError(f"shape: negative dimension in {self.shape}")
        nbytes = math.prod(self.shape) * DTYPE_BYTES[self.dtype]
        if self.offset + self.data_bytes > nbytes:
            raise ValueError(
                f"data: bytes {self.offset}..{self.offset + self.data_bytes} overrun a tensor of {nbytes}"
            )
        return self

    @property
    def data_bytes(self) -> int:
        return memoryview(self.data).nbytes

    @property
    def tensor_bytes(self) -> int:
        return math.prod(self.shape) * DTYPE_BYTES[self.dtype]


def numpy_dtype(dtype: DType) -> np.dtype:
    """The numpy dtype for raw bytes of `dtype` (bfloat16 travels as its raw 16-bit pattern)."""
    return np.dtype("uint16") if dtype == "bfloat16" else np.dtype(dtype)
