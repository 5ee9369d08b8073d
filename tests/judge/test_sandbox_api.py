"""SandboxFusion's run_code schema to the judge's runs and back (no daemon)."""

from __future__ import annotations

import base64

import pytest
from sandbox_fusion import RunCodeResponse

from judge.config import HttpConfig
from judge.sandbox_api import BadRunCode, run_code_response, run_request
from proto.run import RunResult


def test_a_request_becomes_a_run_with_its_limits_and_files() -> None:
    run = run_request(
        {
            "code": "print(1)",
            "language": "python",
            "stdin": None,
            "run_timeout": 3,
            "memory_limit_MB": -1,
            "files": {"a/b.txt": base64.b64encode(b"xy").decode(), "skipped": None},
            "fetch_files": ["out"],
            "some_field_of_another_client": True,
        },
        "r1",
    )
    assert (run.id, run.stdin, run.time_limit_s, run.memory_limit_mb) == ("r1", "", 3, None)
    assert run.files == {"a/b.txt": b"xy"} and run.fetch_files == ["out"]
    assert (
        run_request({"code": "", "language": "python3", "memory_limit_MB": 256}, "r").memory_limit_mb == 256
    )


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"language": "python"}, "code: Field required"),
        ({"code": "", "language": "rust"}, "language: 'rust' is not supported"),
        ({"code": "", "language": "python", "run_timeout": 0}, "run_timeout:"),
        ({"code": "", "language": "python", "files": {"x": "not base64!"}}, "files.x: not base64"),
        ({"code": "", "language": "python", "files": {"/etc/passwd": ""}}, "must be relative"),
        ({"code": "", "language": "python", "fetch_files": ["../../x"]}, "must be relative"),
        ([1, 2], "body:"),
    ],
)
def test_bad_requests_name_the_field(body: object, message: str) -> None:
    with pytest.raises(BadRunCode, match=message.replace("(", r"\(")):
        run_request(body, "r")


def result(**fields: object) -> RunResult:
    return RunResult(id="r", **{"status": "finished", "exit_code": 0, "wall_s": 0.1, **fields})  # type: ignore[arg-type]


def test_results_map_to_the_schema_its_client_parses() -> None:
    cases = [
        (result(stdout="ok\n"), "Success", "Finished", 0),
        (result(exit_code=2), "Failed", "Finished", 2),
        (result(exit_code=None, signal=9), "Failed", "Finished", -9),
        (result(status="time_limit", exit_code=None, signal=9), "Failed", "TimeLimitExceeded", -9),
        (
            result(status="output_limit", exit_code=None, signal=9, detail="killed: output"),
            "Failed",
            "Error",
            -9,
        ),
        (result(status="syntax_error", exit_code=None, detail="SyntaxError: bad"), "Failed", "Finished", 1),
    ]
    for run, status, run_status, code in cases:
        body = run_code_response(run)
        parsed = RunCodeResponse(**body)  # the official client's own model
        assert (parsed.status, parsed.run_result.status, parsed.run_result.return_code) == (
            status,
            run_status,
            code,
        )
    assert "SyntaxError: bad" in run_code_response(cases[-1][0])["run_result"]["stderr"]
    failed = run_code_response(result(status="sandbox_error", detail="no jail"))
    assert (failed["status"], failed["message"], failed["run_result"]) == ("SandboxError", "no jail", None)
    files = run_code_response(result(files={"o.txt": b"\x00\x01"}))["files"]
    assert files == {"o.txt": base64.b64encode(b"\x00\x01").decode()}


def test_http_config_refuses_off_loopback_without_a_token() -> None:
    assert HttpConfig(bind="127.0.0.1:8080").bind == "127.0.0.1:8080"
    assert HttpConfig(bind="[::1]:8080").bind == "[::1]:8080"
    for bind in ("0.0.0.0:8080", "10.1.2.3:80", "judge.example.org:8080"):
        with pytest.raises(ValueError, match="token_file"):
            HttpConfig(bind=bind)
    with pytest.raises(ValueError, match="HOST:PORT"):
        HttpConfig(bind="8080")
