"""Fixtures for the data preparation tests: writing source files, and a real sandbox."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from judge.config import SandboxConfig
from judge.preflight import ready_sandbox
from judge.sandbox import Sandbox


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="session")
def sandbox() -> Sandbox:
    """The real nsjail sandbox, after the same start-up check the daemon runs."""
    return ready_sandbox(SandboxConfig())
