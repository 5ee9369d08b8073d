"""Prompt files in and out: validated reading, and writing that never leaves half a file."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from proto.prompt import Kind, load_prompts


def read_prompts(path: Path, kind: Kind) -> list[dict[str, Any]]:
    """The records of a prompt file, validated by `proto.prompt.load_prompts` (which raises
    `PromptSetError` naming the bad record)."""
    return [prompt.model_dump(exclude_none=True) for prompt in load_prompts(path, kind)]


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Every object of a JSON Lines file (reports, pass rates)."""
    records = []
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
            if not isinstance(record, dict):
                raise ValueError(f"{path}:{number}: expected an object")
            records.append(record)
    return records


def write_jsonl(path: Path, records: Iterable[dict[str, Any]]) -> int:
    """Write `records` to `path` through a temporary file renamed at the end; the count written.

    If `records` raises part way, the temporary file is removed and `path` is left as it was.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    count = 0
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            for record in records:
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
                count += 1
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    return count
