"""openai_humaneval rows: `task_id`, `prompt` (signature and docstring), `canonical_solution`,
`test` (defines `check(candidate)`), `entry_point`.

The judge runs `test` after the response's program and calls `check` on `entry_point`.
"""

from __future__ import annotations

from typing import Any

from dataprep.records import source_id
from dataprep.rows import RowError, required_text
from dataprep.templates import code_prompt

TASK = "Complete the following Python function."


def convert_row(row: dict[str, Any], number: int, prefix: str) -> dict[str, Any]:
    ident = required_text(row, "task_id")
    code = required_text(row, "prompt")
    test = required_text(row, "test")
    entry_point = required_text(row, "entry_point").strip()
    if not entry_point.isidentifier():
        raise RowError("entry_point", f"{entry_point!r} is not a Python identifier")
    if "def check(" not in test:
        raise RowError("test", "defines no check(candidate)")
    return {
        "id": source_id(prefix, ident.strip()),
        "prompt": code_prompt(TASK, code),
        "test_program": test,
        "fn_name": entry_point,
    }
