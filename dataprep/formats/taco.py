"""TACO and APPS rows: `question`, `input_output` (JSON `{"inputs", "outputs", "fn_name"?}`),
`starter_code`, `difficulty`, `source`/`url`, `problem_id` or `id`, and TACO's `time_limit` and
`memory_limit` ("2 seconds", "256 megabytes").

With `fn_name` the tests are calls: each input is the list of arguments, each output the return
value. APPS wraps every return value in a one-element list; when all outputs of a problem are
one-element lists they are unwrapped (a problem whose function always returns a one-element list
is then misread, which is why a mix of wrapped and unwrapped outputs is left as it is).
Without `fn_name` inputs and outputs are stdin and stdout, as strings or lists of lines.
"""

from __future__ import annotations

import json
import re
from typing import Any

from dataprep.records import meta_of, source_id
from dataprep.rows import RowError, optional_text, required_text
from dataprep.templates import code_prompt


def _stream(field: str, value: Any) -> str:
    """A stdin or stdout text: a string, or a list of lines joined with newlines."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(line, str) for line in value):
        return "".join(line if line.endswith("\n") else line + "\n" for line in value)
    raise RowError(field, f"expected a string or a list of lines, got {type(value).__name__}")


def _call_tests(inputs: list[Any], outputs: list[Any]) -> list[dict[str, str]]:
    wrapped = all(isinstance(output, list) and len(output) == 1 for output in outputs)
    cases = []
    for index, (arguments, output) in enumerate(zip(inputs, outputs, strict=True)):
        if not isinstance(arguments, list):
            raise RowError(f"input_output.inputs[{index}]", "a call's input must be a list of arguments")
        try:
            lines = "\n".join(json.dumps(argument) for argument in arguments)
            expected = json.dumps(output[0] if wrapped else output)
        except (TypeError, ValueError) as exc:
            raise RowError(f"input_output[{index}]", f"not representable as JSON ({exc})") from None
        cases.append({"input": lines, "output": expected})
    return cases


def _tests(row: dict[str, Any]) -> tuple[list[dict[str, str]], str | None]:
    raw = row.get("input_output")
    if isinstance(raw, str):
        if not raw.strip():
            raise RowError("input_output", "is empty")
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise RowError("input_output", f"not valid JSON ({exc.msg})") from None
    if not isinstance(raw, dict):
        raise RowError("input_output", "is missing or not an object")
    inputs, outputs = raw.get("inputs"), raw.get("outputs")
    if not isinstance(inputs, list) or not isinstance(outputs, list):
        raise RowError("input_output", "needs lists `inputs` and `outputs`")
    if len(inputs) != len(outputs):
        raise RowError("input_output", f"{len(inputs)} inputs but {len(outputs)} outputs")
    if not inputs:
        raise RowError("input_output", "the problem has no tests")
    fn_name = raw.get("fn_name")
    if fn_name is not None:
        if not isinstance(fn_name, str) or not fn_name.isidentifier():
            raise RowError("input_output.fn_name", f"{fn_name!r} is not a Python identifier")
        return _call_tests(inputs, outputs), fn_name
    cases = [
        {
            "input": _stream(f"input_output.inputs[{index}]", given),
            "output": _stream(f"input_output.outputs[{index}]", wanted),
        }
        for index, (given, wanted) in enumerate(zip(inputs, outputs, strict=True))
    ]
    return cases, None


# TACO states limits as text ("2 seconds", "256 megabytes"; "None" where unknown)
_SECONDS = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:s|sec|secs|second|seconds)\s*$", re.IGNORECASE)
_MEGABYTES = re.compile(r"^\s*(\d+)\s*(?:mb|megabytes?)\s*$", re.IGNORECASE)


def _limits(row: dict[str, Any]) -> dict[str, Any]:
    """The problem's own time and memory limits where TACO gives them readably; else none (the
    judge's defaults apply)."""
    limits: dict[str, Any] = {}
    seconds = _SECONDS.match(str(row.get("time_limit") or ""))
    if seconds and float(seconds.group(1)) > 0:
        limits["time_limit_s"] = float(seconds.group(1))
    megabytes = _MEGABYTES.match(str(row.get("memory_limit") or ""))
    if megabytes and int(megabytes.group(1)) > 0:
        limits["memory_limit_mb"] = int(megabytes.group(1))
    return limits


def convert_row(row: dict[str, Any], number: int, prefix: str) -> dict[str, Any]:
    ident = optional_text(row, "problem_id", "id", "name") or str(number)
    problem = required_text(row, "question")
    tests, fn_name = _tests(row)
    record: dict[str, Any] = {
        "id": source_id(prefix, ident.strip()),
        "prompt": code_prompt(problem, optional_text(row, "starter_code")),
        "tests": tests,
    }
    if fn_name is not None:
        record["fn_name"] = fn_name
    record.update(_limits(row))
    record["meta"] = meta_of(
        difficulty=optional_text(row, "difficulty"),
        source=optional_text(row, "source"),
        url=optional_text(row, "url"),
        date=optional_text(row, "date"),
    )
    return record
