"""Output comparison, the two LiveCodeBench ways.

Standard input/output: line by line, ignoring the trailing whitespace of each line and trailing
empty lines (so `\r\n` and a missing final newline do not matter; leading spaces and blank lines
in the middle do). Call-based: the JSON of the return value against the expected JSON, compared
as parsed values (`[1, 2]` equals `[1,2]`; a tuple returned arrives as a list).
"""

from __future__ import annotations

from typing import Any

SHOWN = 80


def _shown(text: str) -> str:
    return repr(text if len(text) <= SHOWN else text[:SHOWN] + "...")


def _lines(text: str) -> list[str]:
    lines = [line.rstrip() for line in text.split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def stdout_difference(expected: str, actual: str) -> str | None:
    """None if `actual` is an accepted output for `expected`, else where they first differ."""
    want, got = _lines(expected), _lines(actual)
    for number, (a, b) in enumerate(zip(want, got, strict=False), start=1):
        if a != b:
            return f"line {number}: expected {_shown(a)}, got {_shown(b)}"
    if len(got) < len(want):
        missing = want[len(got)]
        return f"expected {len(want)} lines, got {len(got)}; line {len(got) + 1} should be {_shown(missing)}"
    if len(got) > len(want):
        extra = got[len(want)]
        return f"expected {len(want)} lines, got {len(got)}; extra line {len(want) + 1}: {_shown(extra)}"
    return None


def value_difference(expected: Any, actual: Any, expected_text: str, actual_text: str) -> str | None:
    """None if the parsed return value equals the parsed expected value."""
    if expected == actual:
        return None
    return f"expected {_shown(expected_text.strip())}, returned {_shown(actual_text.strip())}"
