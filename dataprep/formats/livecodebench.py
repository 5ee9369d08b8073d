"""LiveCodeBench code_generation_lite rows.

`public_test_cases` is a JSON string of `[{"input", "output", "testtype"}]`; `private_test_cases`
is the same, or that JSON string pickled, zlib-compressed and base64-encoded (the hub's layout,
decoded as LiveCodeBench's loader does, but by an unpickler that admits no globals: the payload
is a plain string, and anything else in it is refused before it can run).
Functional tests (`testtype: "functional"`) are already the judge's call-based format: newline-
separated JSON arguments in, the JSON return value out; `metadata.func_name` names the method.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import pickle
import zlib
from typing import Any

from dataprep.records import meta_of, source_id
from dataprep.rows import RowError, optional_text, required_text
from dataprep.templates import code_prompt

TEST_TYPES = ("stdin", "functional")
# Far above the largest published test set; a guard against a compressed bomb, not a format rule.
MAX_UNPACKED_BYTES = 4 << 30


class _StringOnlyUnpickler(pickle.Unpickler):
    """Refuses every global: a pickled str needs none, and globals are how a pickle runs code."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only a pickled string is accepted")


def decode_private_tests(text: str) -> Any:
    """The test list in `private_test_cases`: plain JSON, or base64 -> zlib -> pickle -> JSON."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    try:
        inflater = zlib.decompressobj()
        packed = inflater.decompress(
            base64.b64decode(text.encode("utf-8"), validate=True), MAX_UNPACKED_BYTES
        )
        if inflater.unconsumed_tail:
            raise RowError("private_test_cases", f"unpacks to more than {MAX_UNPACKED_BYTES} bytes")
    except (binascii.Error, zlib.error, ValueError) as exc:
        raise RowError("private_test_cases", f"neither JSON nor base64/zlib data ({exc})") from None
    try:
        payload = _StringOnlyUnpickler(io.BytesIO(packed)).load()
    except pickle.UnpicklingError as exc:
        raise RowError("private_test_cases", f"unsafe or broken pickle: {exc}") from None
    except Exception as exc:  # a corrupt pickle fails in many ways; none of them runs code
        raise RowError("private_test_cases", f"broken pickle ({type(exc).__name__}: {exc})") from None
    if not isinstance(payload, str):
        raise RowError("private_test_cases", f"the pickle holds a {type(payload).__name__}, not a string")
    try:
        return json.loads(payload)
    except json.JSONDecodeError as exc:
        raise RowError("private_test_cases", f"the unpickled string is not JSON ({exc.msg})") from None


def _test_list(field: str, value: Any) -> list[Any]:
    if isinstance(value, str):
        if not value.strip():
            return []
        value = decode_private_tests(value) if field == "private_test_cases" else _json(field, value)
    if not isinstance(value, list):
        raise RowError(field, f"expected a list of tests, got {type(value).__name__}")
    return value


def _json(field: str, text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise RowError(field, f"not valid JSON ({exc.msg})") from None


def _tests(row: dict[str, Any]) -> tuple[list[dict[str, str]], bool]:
    """Public then private tests as judge test cases, and whether they are functional."""
    cases: list[dict[str, str]] = []
    kinds: set[str] = set()
    for field in ("public_test_cases", "private_test_cases"):
        for index, test in enumerate(_test_list(field, row.get(field) or [])):
            where = f"{field}[{index}]"
            if not isinstance(test, dict):
                raise RowError(where, f"expected an object, got {type(test).__name__}")
            kind = test.get("testtype", "stdin")
            if kind not in TEST_TYPES:
                raise RowError(f"{where}.testtype", f"unknown test type {kind!r}")
            kinds.add(kind)
            case = {}
            for part in ("input", "output"):
                value = test.get(part)
                if not isinstance(value, str):
                    raise RowError(f"{where}.{part}", "missing or not a string")
                case[part] = value
            if kind == "functional":
                _check_functional(where, case)
            cases.append(case)
    if not cases:
        raise RowError("public_test_cases", "the problem has no tests")
    if len(kinds) > 1:
        raise RowError("private_test_cases", "mixes stdin and functional tests")
    return cases, kinds == {"functional"}


def _check_functional(where: str, case: dict[str, str]) -> None:
    """Every argument line and the output must be JSON, as the judge will parse them."""
    for line in case["input"].splitlines():
        if line.strip():
            _json(f"{where}.input", line)
    _json(f"{where}.output", case["output"])


def _function_name(row: dict[str, Any]) -> str:
    metadata = row.get("metadata")
    if isinstance(metadata, str):
        metadata = _json("metadata", metadata) if metadata.strip() else {}
    name = metadata.get("func_name") if isinstance(metadata, dict) else None
    if not isinstance(name, str) or not name.isidentifier():
        raise RowError("metadata", f"functional tests need metadata.func_name, got {name!r}")
    return name


def _date(row: dict[str, Any]) -> str | None:
    value = row.get("contest_date")
    if value is None:
        return None
    if hasattr(value, "isoformat"):  # Parquet gives a datetime
        return str(value.isoformat())
    if not isinstance(value, str):
        raise RowError("contest_date", f"expected a date, got {type(value).__name__}")
    return value


def convert_row(row: dict[str, Any], number: int, prefix: str) -> dict[str, Any]:
    ident = required_text(row, "question_id")
    problem = required_text(row, "question_content")
    tests, functional = _tests(row)
    starter = optional_text(row, "starter_code")
    record: dict[str, Any] = {
        "id": source_id(prefix, ident.strip()),
        "prompt": code_prompt(problem, starter),
        "tests": tests,
    }
    if functional:
        record["fn_name"] = _function_name(row)
    record["meta"] = meta_of(
        title=optional_text(row, "question_title"),
        platform=optional_text(row, "platform"),
        contest_id=optional_text(row, "contest_id"),
        date=_date(row),
        difficulty=optional_text(row, "difficulty"),
    )
    return record
