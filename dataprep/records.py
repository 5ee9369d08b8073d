"""Prompt records as convert writes them: ids, source metadata, and validation."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from dataprep.rows import RowError
from proto.judge import JudgeRequest
from proto.prompt import CodePrompt, Kind, MathPrompt

MAX_ID_CHARS = 200
# Fields of a code record that are not judge request fields.
PROMPT_ONLY_FIELDS = ("prompt", "meta")


def source_id(prefix: str, ident: str) -> str:
    """`prefix/ident`, or `ident` alone when it already starts with the prefix."""
    full = ident if not prefix or ident.startswith(prefix + "/") else f"{prefix}/{ident}"
    if len(full) > MAX_ID_CHARS:
        raise RowError("id", f"{full[:40]!r}... is longer than {MAX_ID_CHARS} characters")
    return full


def meta_of(**fields: Any) -> dict[str, Any]:
    """The source metadata that is present (None and empty strings left out)."""
    return {key: value for key, value in fields.items() if value is not None and value != ""}


def judge_request(record: dict[str, Any], response: str) -> JudgeRequest:
    """The judge request a code record stands for, answered by `response`."""
    fields = {key: value for key, value in record.items() if key not in PROMPT_ONLY_FIELDS}
    return JudgeRequest.model_validate({**fields, "kind": "code", "response": response})


def validated(record: dict[str, Any], kind: Kind) -> dict[str, Any]:
    """`record` checked against the prompt schema (and, for code, the judge's request schema)."""
    try:
        if kind == "math":
            MathPrompt.model_validate(record)
        else:
            CodePrompt.model_validate(record)
            judge_request(record, "")
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        field = ".".join(str(part) for part in error["loc"]) or "record"
        raise RowError(field, error["msg"].removeprefix("Value error, ")) from None
    return record
