"""SandboxFusion's `run_code` schema, translated to and from the judge's own run messages.

Request: `code`, `language`, `stdin`, `run_timeout`, `compile_timeout`, `memory_limit_MB`,
`files` (path -> base64), `fetch_files`; any other field is accepted and ignored, as the
service itself does. `run_timeout` becomes the run's CPU limit (the wall limit follows the
judge's `wall_ratio`); `memory_limit_MB` <= 0 means the judge's default.

Response: `status` (Success: the program exited 0; Failed: it did not, or hit a limit;
SandboxError: the judge could not run it), `message`, `compile_result` (always null: Python
has no compile step), `run_result` {`status` (Finished, TimeLimitExceeded or Error),
`execution_time`, `cpu_time`, `return_code`, `stdout`, `stderr`}, `files` (path -> base64).
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from proto.run import RunRequest, RunResult

LANGUAGES = ("python", "python3")  # what this judge runs; SandboxFusion names many more


class RunCodeRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    code: str
    language: str
    stdin: str | None = None
    run_timeout: float | None = Field(default=None, gt=0)
    compile_timeout: float | None = None  # nothing to compile
    memory_limit_MB: int | None = None
    files: dict[str, str | None] = {}
    fetch_files: list[str] = []


class BadRunCode(ValueError):
    """A run_code request this judge cannot take; the message says which field and why."""


def run_request(body: Any, request_id: str) -> RunRequest:
    """The judge's run for one `run_code` body; raises BadRunCode."""
    try:
        asked = RunCodeRequest.model_validate(body)
    except ValidationError as exc:
        raise BadRunCode(first_error(exc)) from None
    if asked.language not in LANGUAGES:
        raise BadRunCode(f"language: {asked.language!r} is not supported here; this judge runs python")
    files = {}
    for name, content in asked.files.items():
        if content is None:
            continue
        try:
            files[name] = base64.b64decode(content, validate=True)
        except (binascii.Error, ValueError):
            raise BadRunCode(f"files.{name}: not base64") from None
    memory = asked.memory_limit_MB if asked.memory_limit_MB and asked.memory_limit_MB > 0 else None
    try:
        return RunRequest(
            id=request_id,
            code=asked.code,
            stdin=asked.stdin or "",
            time_limit_s=asked.run_timeout,
            memory_limit_mb=memory,
            files=files,
            fetch_files=asked.fetch_files,
        )
    except ValidationError as exc:
        raise BadRunCode(first_error(exc)) from None


def run_code_response(result: RunResult) -> dict[str, Any]:
    """SandboxFusion's response body for a run's result."""
    if result.status in ("sandbox_error", "bad_request"):
        return error_response(result.detail or result.status)
    if result.status == "syntax_error":  # Python itself would run, fail to compile, and exit 1
        run = _command_result("Finished", result, return_code=1, stderr=result.detail + "\n")
    else:
        run_status = {"finished": "Finished", "time_limit": "TimeLimitExceeded"}.get(result.status, "Error")
        code = result.exit_code if result.signal is None else -result.signal
        stderr = result.stderr
        if result.status == "output_limit":
            stderr += f"\n{result.detail}\n"
        run = _command_result(run_status, result, return_code=code, stderr=stderr)
    success = run["status"] == "Finished" and run["return_code"] == 0
    return {
        "status": "Success" if success else "Failed",
        "message": result.detail,
        "compile_result": None,
        "run_result": run,
        "executor_pod_name": None,
        "files": {name: base64.b64encode(data).decode() for name, data in result.files.items()},
    }


def error_response(message: str) -> dict[str, Any]:
    return {
        "status": "SandboxError",
        "message": message,
        "compile_result": None,
        "run_result": None,
        "executor_pod_name": None,
        "files": {},
    }


def _command_result(
    status: str, result: RunResult, *, return_code: int | None, stderr: str
) -> dict[str, Any]:
    return {
        "status": status,
        "execution_time": result.wall_s,
        "cpu_time": result.cpu_s,
        "return_code": return_code,
        "stdout": result.stdout,
        "stderr": stderr,
    }


def first_error(exc: ValidationError, where: str = "") -> str:
    """The first problem pydantic found, as 'field: what' (a whole-record check names its field)."""
    error = exc.errors()[0]
    field = ".".join(str(part) for part in error["loc"])
    message = error["msg"].removeprefix("Value error, ")
    named, colon, _ = message.partition(": ")
    if not field and not (colon and named.isidentifier()):
        return f"{where or 'body'}: {message}"
    return f"{where + '.' if where else ''}{field + ': ' if field else ''}{message}"
