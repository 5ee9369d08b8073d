"""nvidia/AceReason-Math: rows `problem`, `answer`; no id, so the row number (from 0) is the id."""

from __future__ import annotations

from typing import Any

from dataprep.records import source_id
from dataprep.rows import required_text
from dataprep.templates import math_prompt


def convert_row(row: dict[str, Any], number: int, prefix: str) -> dict[str, Any]:
    problem = required_text(row, "problem")
    answer = required_text(row, "answer")
    return {"id": source_id(prefix, str(number)), "prompt": math_prompt(problem), "answer": answer.strip()}
