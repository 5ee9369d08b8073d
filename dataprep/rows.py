"""Reading the rows of a published data set: JSON Lines (optionally gzipped), a JSON array, Parquet."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


class RowError(ValueError):
    """A row that cannot be converted; `field` names the source column at fault."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


class SourceError(ValueError):
    """A file that cannot be read, or a bad row, named by file, row and field."""


def _open_text(path: Path) -> IO[str]:
    if path.name.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8")
    return path.open(encoding="utf-8")


def _stem(path: Path) -> str:
    """The file name without a trailing .gz: what the format is told by."""
    return path.name.removesuffix(".gz")


def read_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(row number, row) pairs, numbered from 0 in file order (blank JSONL lines are not rows)."""
    if not path.exists():
        raise SourceError(f"{path}: no such file")
    name = _stem(path)
    if name.endswith(".parquet"):
        import pyarrow.parquet as pq  # only needed here

        table = pq.read_table(path)
        for number, row in enumerate(table.to_pylist()):
            yield number, row
        return
    with _open_text(path) as text:
        if name.endswith(".json"):
            try:
                rows = json.load(text)
            except json.JSONDecodeError as exc:
                raise SourceError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno})") from None
            if not isinstance(rows, list):
                raise SourceError(f"{path}: expected a JSON array of rows")
            for number, row in enumerate(rows):
                yield number, _object(path, number, row)
            return
        number = 0
        for line_number, line in enumerate(text, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise SourceError(
                    f"{path}: row {number} (line {line_number}): not valid JSON ({exc.msg})"
                ) from None
            yield number, _object(path, number, row)
            number += 1


def _object(path: Path, number: int, row: Any) -> dict[str, Any]:
    if not isinstance(row, dict):
        raise SourceError(f"{path}: row {number}: expected an object, got {type(row).__name__}")
    return row


def optional_text(row: dict[str, Any], *names: str) -> str | None:
    """The first of `names` present in `row` as a non-blank string (numbers made one), else None."""
    for name in names:
        value = row.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise RowError(name, f"expected a string, got {type(value).__name__}")
        text = str(value)
        return text if text.strip() else None
    return None


def required_text(row: dict[str, Any], *names: str) -> str:
    """As `optional_text`, but a missing or blank value is an error naming the first of `names`."""
    text = optional_text(row, *names)
    if text is None:
        present = [name for name in names if name in row]
        raise RowError(present[0] if present else names[0], "is empty" if present else "is missing")
    return text
