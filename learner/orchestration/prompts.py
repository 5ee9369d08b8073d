"""Prompt sets: loading and validating them, and the order in which an epoch visits them.

Math records are `{"id", "prompt", "answer"}`; code records are `{"id", "prompt", "tests":
[{"input", "output"}], "fn_name"?, "time_limit_s"?, "memory_limit_mb"?}` or, instead of "tests",
a "test_program" (assertion style; the judge's format). Other fields (`meta`) are kept out.
Files: JSON Lines (`.jsonl`), a JSON array (`.json`), Parquet (`.parquet`), or a directory
written by `datasets.Dataset.save_to_disk`.
"""

from __future__ import annotations

import json
import random
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


class CodePrompt(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    id: str = Field(min_length=1, max_length=200)
    prompt: str = Field(min_length=1)
    tests: list[TestCase] | None = Field(default=None, min_length=1)
    test_program: str | None = None
    fn_name: str | None = None
    time_limit_s: float | None = Field(default=None, gt=0)
    memory_limit_mb: int | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _tested(self) -> CodePrompt:
        if (self.tests is None) == (self.test_program is None):
            raise ValueError("tests: give test cases or a test_program (one of them)")
        return self


Prompt = MathPrompt | CodePrompt


class PromptSetError(ValueError):
    pass


def _records(path: Path) -> Iterator[tuple[str, Any]]:
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
    for where, record in _records(path):
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


class PromptOrder:
    """Which prompt comes next: a fresh seeded shuffle per epoch, minus the removed prompts.

    The order depends only on (seed, epoch, removed), so a resumed run visits the same prompts
    in the same order as an uninterrupted one. Removals take effect from the next epoch.
    """

    def __init__(self, ids: list[str], seed: int | str) -> None:
        self.ids = list(ids)
        self.seed = seed
        self.epoch = 0
        self.position = 0
        self.removed: set[str] = set()
        self._drawn_without: set[str] = set()  # the removals this epoch's order was drawn with
        self._order = self._draw()

    def _draw(self) -> list[str]:
        self._drawn_without = set(self.removed)
        order = [i for i in self.ids if i not in self._drawn_without]
        random.Random(f"{self.seed}/{self.epoch}").shuffle(order)
        return order

    @property
    def exhausted(self) -> bool:
        """Has every prompt of this epoch been drawn?"""
        return self.position == len(self._order)

    def next(self) -> str | None:
        """The next prompt id of this epoch, or None at its end (call `new_epoch`)."""
        if self.exhausted:
            return None
        prompt_id = self._order[self.position]
        self.position += 1
        return prompt_id

    def new_epoch(self) -> bool:
        """Start the next epoch; False if every prompt has been removed."""
        self.epoch += 1
        self.position = 0
        self._order = self._draw()
        return bool(self._order)

    def remove(self, prompt_ids: set[str]) -> None:
        self.removed |= prompt_ids & set(self.ids)

    def state(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "position": self.position,
            "removed": sorted(self.removed),
            "drawn_without": sorted(self._drawn_without),
        }

    def restore(self, state: dict[str, Any]) -> None:
        self.epoch = state["epoch"]
        self.removed = set(state["drawn_without"])
        self._order = self._draw()
        self.removed = set(state["removed"])
        self.position = state["position"]
