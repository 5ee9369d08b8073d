"""AIME sets: `id`/`problem`/`answer` or `question`/`answer`, capitalised or not; answers may be ints.

Rows without an id get their row number (from 0).
"""

from __future__ import annotations

from typing import Any

from dataprep.records import meta_of, source_id
from dataprep.rows import optional_text, required_text
from dataprep.templates import math_prompt


def convert_row(row: dict[str, Any], number: int, prefix: str) -> dict[str, Any]:
    problem = required_text(row, "problem", "Problem", "question", "Question")
    answer = required_text(row, "answer", "Answer")
    ident = optional_text(row, "id", "ID") or str(number)
    record: dict[str, Any] = {
        "id": source_id(prefix, ident.strip()),
        "prompt": math_prompt(problem),
        "answer": answer.strip(),
    }
    meta = meta_of(url=row.get("url") or row.get("URL"), year=row.get("year"))
    if meta:
        record["meta"] = meta
    return record
