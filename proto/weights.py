"""Weight publication: an announcement of a new policy version, then its tensors in chunks."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from pydantic import Field, model_validator

from proto.message import Blob, Message, Struct

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


ALIGN = 64  # every tensor of a weight file (or a broadcast of one) starts at a multiple of this


def aligned(offset: int) -> int:
    """The first multiple of ALIGN at or after `offset`."""
    return -(-offset // ALIGN) * ALIGN


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype of a wire dtype name. torch is imported here, not by every user of proto."""
    import torch

    return getattr(torch, name)


class BroadcastGroup(Struct):
    """The collective path of one version: the learner (rank 0) and `members` (rank i + 1) form
    a process group through the store at `store` and receive the version as one broadcast."""

    store: str = Field(min_length=1, max_length=300)  # HOST:PORT of the learner's TCPStore
    group_id: int = Field(ge=0)  # a new id whenever the members change: a new group
    members: list[str] = Field(min_length=1, max_length=4096)  # generator ids
    backend: Literal["gloo"] = "gloo"
    bucket_bytes: int = Field(ge=1)


class WeightAnnounce(Message):
    """Version `version` is ready; fetch it with WeightRequest from `address` (empty: same peer).
    With `group`, its members receive it by broadcast instead (and may still fetch it)."""

    TYPE = "weight_announce"

    version: int = Field(ge=0)
    num_tensors: int = Field(ge=0)
    total_bytes: int = Field(ge=0)
    address: str = ""
    group: BroadcastGroup | None = None


class WeightRequest(Message):
    TYPE = "weight_request"

    version: int = Field(ge=0)
    generator_id: str = Field(min_length=1, max_length=256)
    join_broadcast: bool = False  # receive the next versions by broadcast (the collective path)


class TensorSpec(Struct):
    name: str = Field(min_length=1, max_length=1024)
    dtype: DType
    shape: list[int]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * DTYPES[self.dtype].itemsize


class WeightManifest(Message):
    """First of a broadcast: what the bytes that follow are. They are the version laid out as a
    generator's weight file is (`layout`): each tensor's raw bytes at a multiple of `ALIGN`, in
    this order, the gaps between carrying nothing. They go in buckets of the group's
    `bucket_bytes`, so a receiver can take each bucket straight into its file."""

    TYPE = "weight_manifest"

    version: int = Field(ge=0)
    tensors: list[TensorSpec] = Field(min_length=1)

    @property
    def total_bytes(self) -> int:
        return sum(spec.nbytes for spec in self.tensors)

    def layout(self) -> tuple[list[int], int]:
        """Where each tensor starts, and the size of the whole layout."""
        offsets, end = [], 0
        for spec in self.tensors:
            offsets.append(aligned(end))
            end = offsets[-1] + spec.nbytes
        return offsets, end


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
