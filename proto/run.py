"""Running a program in the judge's sandbox and getting its output back (no expected output).

run_request: {"id", "code", "stdin", "time_limit_s"?, "memory_limit_mb"?, "files", "fetch_files"}
run_result:  {"id", "status", "exit_code", "signal", "cpu_s", "wall_s", "stdout", "stderr",
              "files", "detail"}

This is what a sandbox service's `run_code` does; a verdict needs a `JudgeRequest` instead.
"""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import ClassVar, Literal

from pydantic import Field, field_validator

from proto.message import Message

MAX_FILES = 64
RunStatus = Literal[
    "finished",  # the program ran and exited (any exit status) or was killed by a signal
    "time_limit",
    "output_limit",
    "syntax_error",  # Python could not compile it: it never ran
    "sandbox_error",  # the judge's problem, not the program's
    "bad_request",
]


def _relative_path(name: str) -> str:
    path = PurePosixPath(name)
    if not name or path.is_absolute() or ".." in path.parts or "\x00" in name:
        raise ValueError(f"{name!r}: a file path must be relative and stay in the working directory")
    return name


class RunRequest(Message):
    TYPE = "run_request"
    kind: ClassVar[str] = "run"  # beside JudgeRequest.kind, so queues can tell the two apart

    id: str = Field(min_length=1, max_length=256)
    code: str
    stdin: str = ""
    time_limit_s: float | None = Field(default=None, gt=0)
    memory_limit_mb: int | None = Field(default=None, gt=0)
    files: dict[str, bytes] = Field(default={}, max_length=MAX_FILES)  # written before the run
    fetch_files: list[str] = Field(default=[], max_length=MAX_FILES)  # read back after it

    @field_validator("files")
    @classmethod
    def _file_names(cls, files: dict[str, bytes]) -> dict[str, bytes]:
        for name in files:
            _relative_path(name)
        return files

    @field_validator("fetch_files")
    @classmethod
    def _fetch_names(cls, names: list[str]) -> list[str]:
        for name in names:
            _relative_path(name)
        return names


class RunResult(Message):
    TYPE = "run_result"

    id: str = Field(max_length=256)
    status: RunStatus
    exit_code: int | None = None
    signal: int | None = None
    cpu_s: float = 0.0
    wall_s: float = 0.0
    stdout: str = ""
    stderr: str = ""  # its tail: the judge keeps `judge.sandbox.limits.stderr_kb`
    files: dict[str, bytes] = {}  # the fetched files that existed
    detail: str = Field(default="", max_length=4000)
