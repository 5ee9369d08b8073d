"""The published layouts `acerl data convert` reads: one module per data set family.

Each module's `convert_row(row, number, prefix)` turns one source row into a prompt record (a
plain dict, validated later) or raises `RowError` naming the column at fault.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dataprep.formats import acereason_math, aime, humaneval, livecodebench, taco
from proto.prompt import Kind

RowConverter = Callable[[dict[str, Any], int, str], dict[str, Any]]


@dataclass(frozen=True)
class Format:
    kind: Kind
    convert_row: RowConverter
    default_prefix: str


FORMATS: dict[str, Format] = {
    "acereason-math": Format("math", acereason_math.convert_row, "acereason-math"),
    "aime": Format("math", aime.convert_row, "aime"),
    "livecodebench": Format("code", livecodebench.convert_row, "lcb"),
    "taco": Format("code", taco.convert_row, "taco"),
    "humaneval": Format("code", humaneval.convert_row, "humaneval"),
}
