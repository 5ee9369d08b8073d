"""Prompt sets: the record of one prompt, and loading and validating a file of them.

Math records are `{"id", "prompt", "answer"}`; code records are `{"id", "prompt", "tests":
[{"input", "output"}], "fn_name"?, "time_limit_s"?, "memory_limit_mb"?}` or, instead of "tests",
a "test_program" (assertion style; the judge's format). Source metadata (difficulty, date, platform, source)
rides along under `meta`; other fields are ignored.
Files: JSON Lines (`.jsonl`), a JSON array (`.json`), Parquet (`.parquet`), or a directory
written by `datasets.Dataset.save_to_disk`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from proto.judge import TestCase

Kind = Literal["math", "code"]


class MathPrompt(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    id: str = Field(min_length=1, max_length=200)
    prompt: str = Field(min_length=1)
    answer: str = Field(min_length=1)
    meta: dict[str, Any] | None = None


class CodePrompt(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    id: str = Field(min_length=1, max_length=200)
    prompt: str = Field(min_length=1)
    tests: list[TestCase] | None = Field(default=None, min_length=1)
    test_program: str | None = None
    fn_name: str | None = None
    time_limit_s: float | None = Field(default=None, gt=0)
    memory_limit_mb: int | None = Field(default=None, gt=0)
    meta: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _tested(self) -> CodePrompt:
        if (self.tests is None) == (self.test_program is None):
            raise ValueError("tests: give test cases or a test_program (one of them)")
        return self


Prompt = MathPrompt | CodePrompt


class PromptSetError(ValueError):
    pass


def records(path: Path) -> Iterator[tuple[str, Any]]:
    """(where, record) pairs; `where` names the line or row for error messages."""
    if path.is_dir() or path.suffix == ".parquet":
        import datasets  # only needed for these formats

        table = (
            datasets.load_from_disk(str(path)) if path.is_dir() else datasets.Dataset.from_parquet(str(path))
        )
        for row, record in enumerate(table):
            yield f"{path} row {row}", record
    elif path.suffix == ".json":
        records = json.loads(path.read_text())
        if not isinstance(records, list):
            raise PromptSetError(f"{path}: expected a JSON array of records")
        for row, record in enumerate(records):
            yield f"{path} record {row}", record
    else:
        with path.open() as lines:
            for number, line in enumerate(lines, start=1):
                if not line.strip():
                    continue
                try:
                    yield f"{path}:{number}", json.loads(line)
                except json.JSONDecodeError as exc:
                    raise PromptSetError(f"{path}:{number}: not valid JSON ({exc.msg})") from None


def load_prompts(path: Path, kind: Kind) -> list[Prompt]:
    """Every record of `path`, validated; the first bad record raises naming its place and field."""
    if not path.exists():
        raise PromptSetError(f"prompt set {path} does not exist")
    model = MathPrompt if kind == "math" else CodePrompt
    prompts: list[Prompt] = []
    seen: dict[str, str] = {}
    for where, record in records(path):
        if not isinstance(record, dict):
            raise PromptSetError(f"{where}: expected an object, got {type(record).__name__}")
        try:
            prompt = model.model_validate(record)
        except ValidationError as exc:
            error = exc.errors(include_url=False)[0]
            field = ".".join(str(part) for part in error["loc"])
            raise PromptSetError(
                f"{where}: {kind} record {record.get('id', '?')!r}: field {field!r}: {error['msg']}"
            ) from None
        if prompt.id in seen:
            raise PromptSetError(f"{where}: id {prompt.id!r} already used at {seen[prompt.id]}")
        seen[prompt.id] = where
        prompts.append(prompt)
    if not prompts:
        raise PromptSetError(f"prompt set {path} holds no records")
    return prompts
