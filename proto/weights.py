"""Weight publication: an announcement of a new policy version, then its tensors in chunks."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from pydantic import Field, model_validator

from proto.message import Blob, Message

if TYPE_CHECKING:
    import torch

DType = Literal["float32", "float16", "bfloat16", "float64", "int64", "int32", "uint8"]


@dataclass(frozen=True)
class DTypeInfo:
    itemsize: int  # bytes per element
    safetensors: str  # its name in a safetensors header


# The one table of the dtypes a weight stream carries, for the learner and the generator alike.
# torch spells each name the same way (`torch.bfloat16`): see `torch_dtype`.
DTYPES: dict[DType, DTypeInfo] = {
    "float32": DTypeInfo(4, "F32"),
    "float16": DTypeInfo(2, "F16"),
    "bfloat16": DTypeInfo(2, "BF16"),
    "float64": DTypeInfo(8, "F64"),
    "int64": DTypeInfo(8, "I64"),
    "int32": DTypeInfo(4, "I32"),
    "uint8": DTypeInfo(1, "U8"),
}


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype of a wire dtype name. torch is imported here, not by every user of proto."""
    import torch

    return getattr(torch, name)


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
        nbytes = self.tensor_bytes
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
        """The size of the whole tensor this chunk is part of."""
        return math.prod(self.shape) * DTYPES[self.dtype].itemsize
