"""Code verdicts: the last ```python block of the final text, run against every test in one jail.

The jail is started once per submission; the runner inside forks one process per test (see
`judge/runner.py`). Tests run in order and judging stops at the first one that fails. Expected
outputs stay here: the jail only ever sees the program and the inputs.

Blame: until the program has been compiled, a failing jail is the judge's problem
(`sandbox_error`, not a verdict on the response). Once the program runs, anything that goes wrong
in the jail is charged to the program, so that no program can turn its failure into "unjudged".
"""

from __future__ import annotations

import json
import signal
import time
from typing import Any

from judge.compare import stdout_difference, value_difference
from judge.extract import final_text, last_python_block, unclosed_think
from judge.jail import Jail, JailBroken, set_aside
from judge.outcome import Outcome
from judge.sandbox import Sandbox, TestLimits, resolve_limits
from proto.judge import JudgeRequest, TestCase

ANSWER_MARGIN_S = 3.0  # beyond a test's wall limit, for the runner to report


def _tail(text: str, lines: int = 6, chars: int = 600) -> str:
    kept = "\n".join(text.strip().splitlines()[-lines:])
    return kept[-chars:]


def _expected_values(request: JudgeRequest) -> list[Any] | str:
    """Parse the expected outputs (and check the argument lines) of a call-based request."""
    values = []
    assert request.tests is not None
    for number, test in enumerate(request.tests, start=1):
        try:
            values.append(json.loads(test.output))
        except ValueError as exc:
            return f"tests[{number - 1}].output: not JSON ({exc})"
        for line in test.input.splitlines():
            if line.strip():
                try:
                    json.loads(line)
                except ValueError as exc:
                    return f"tests[{number - 1}].input: line {line[:60]!r} is not JSON ({exc})"
    return values


def judge_code(request: JudgeRequest, sandbox: Sandbox) -> Outcome:
    if request.fn_name is not None and not request.fn_name.isidentifier():
        return Outcome("bad_request", f"fn_name: {request.fn_name!r} is not a Python identifier")
    limits = resolve_limits(sandbox.config.limits, request.time_limit_s, request.memory_limit_mb)
    if isinstance(limits, str):
        return Outcome("bad_request", limits)
    if request.test_program is not None:  # assertion style: one run, judged by its exit status
        request = request.model_copy(update={"tests": [TestCase(input="", output="")]})
    call_mode = request.fn_name is not None and request.test_program is None
    expected_values = _expected_values(request) if call_mode else None
    if isinstance(expected_values, str):
        return Outcome("bad_request", expected_values)
    text = final_text(request.response, request.opened_think)
    if text is None:
        return Outcome("no_code", unclosed_think(request.opened_think))
    source = last_python_block(text)
    if source is None:
        where = "after the last </think>" if "</think>" in request.response else "in the response"
        return Outcome("no_code", f"no complete ```python block {where}")
    if not source.strip():
        return Outcome("no_code", "the last ```python block is empty")
    return _run(request, source, limits, expected_values, sandbox)


def _run(
    request: JudgeRequest,
    source: str,
    limits: TestLimits,
    expected_values: list[Any] | None,
    sandbox: Sandbox,
) -> Outcome:
    tests = request.tests
    assert tests is not None
    setup_timeout = sandbox.config.limits.setup_timeout_s
    try:
        jail = Jail(sandbox.start(limits, len(tests)))
    except OSError as exc:
        return Outcome("sandbox_error", f"cannot start the jail: {exc}")
    started = False
    index = 0
    try:
        deadline = time.monotonic() + setup_timeout
        mode = "call" if expected_values is not None else "stdio"
        setup = limits.setup(mode, request.fn_name)
        if request.test_program is not None:
            mode = "assert"
            setup.update(mode=mode, test_program=request.test_program)
        jail.send_json(setup, deadline)
        jail.send(source.encode("utf-8", "surrogateescape"), deadline)
        compiled = jail.recv_json(deadline)
        if compiled.get("status") == "bad_test_program":
            return Outcome("bad_request", f"test_program: {compiled.get('detail', '')}")
        if not compiled.get("ok"):
            return Outcome("syntax_error", str(compiled.get("detail", "")))
        started = True
        for index, test in enumerate(tests):
            deadline = time.monotonic() + setup_timeout
            jail.send(test.input.encode("utf-8", "surrogateescape"), deadline)
            deadline = time.monotonic() + limits.wall_s + ANSWER_MARGIN_S
            header = jail.recv_json(deadline)
            stdout = jail.recv(deadline)
            expected = expected_values[index] if expected_values is not None else None
            failure = _failure(index, len(tests), test, header, stdout, limits, mode, expected)
            if failure is not None:
                return failure
        return Outcome("accepted", f"passed all {len(tests)} tests")
    except JailBroken as exc:
        jail.kill()
        where = f"test {index + 1}/{len(tests)}" if started else "start-up"
        if not started:
            return Outcome("sandbox_error", f"the jail failed during {where}: {exc} ({jail.diagnostics()})")
        if exc.timed_out:
            return Outcome("time_limit", f"{where}: the jail stopped answering ({exc})")
        return Outcome("runtime_error", f"{where}: the jail died running the program ({jail.diagnostics()})")
    finally:
        set_aside(jail)


def _failure(
    index: int,
    total: int,
    test: TestCase,
    header: dict[str, Any],
    stdout: bytes,
    limits: TestLimits,
    mode: str,
    expected_value: Any,
) -> Outcome | None:
    where = f"test {index + 1}/{total}"
    killed = header.get("killed")
    report = header.get("report") or {}
    stderr = str(header.get("stderr", ""))
    exit_code, sig = header.get("exit_code"), header.get("signal")
    usage = f"CPU {header.get('cpu_s', 0):.2f} s, wall {header.get('wall_s', 0):.2f} s"
    if killed == "cpu" or sig == signal.SIGXCPU:
        return Outcome("time_limit", f"{where}: CPU time limit of {limits.cpu_s:g} s exceeded ({usage})")
    if killed == "wall":
        return Outcome("time_limit", f"{where}: wall time limit of {limits.wall_s:g} s exceeded ({usage})")
    if killed in ("output", "stderr"):
        stream = "stdout" if killed == "output" else "stderr"
        return Outcome("output_limit", f"{where}: {stream} exceeded {limits.output_bytes} bytes")
    if report.get("type") == "MemoryError" or (sig == signal.SIGKILL) or "MemoryError" in stderr[-200:]:
        detail = f"{where}: memory limit of {limits.memory_mb} MB exceeded ({usage}) {_tail(stderr, 2)}"
        return Outcome("memory_limit", detail.strip())
    if sig is not None:
        name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
        return Outcome("runtime_error", f"{where}: killed by {name} ({usage}) {_tail(stderr)}".strip())
    if mode == "assert":
        if report.get("outcome") == "no_method":
            return Outcome("runtime_error", f"{where}: {report.get('message', '')}")
        if report.get("type") == "AssertionError":
            return Outcome("wrong_answer", f"{where}: an assertion failed {_tail(stderr, 3)}".strip())
    if exit_code != 0:
        return Outcome("runtime_error", f"{where}: exit status {exit_code} ({usage}) {_tail(stderr)}".strip())
    if mode == "assert":
        if report.get("outcome") != "checked":
            return Outcome("wrong_answer", f"{where}: the program ended before the tests did")
        return None
    if mode == "stdio":
        difference = stdout_difference(test.output, stdout.decode("utf-8", "replace"))
        if difference is not None:
            return Outcome("wrong_answer", f"{where}: {difference}")
        return None
    outcome = report.get("outcome")
    if outcome == "no_method":
        return Outcome("runtime_error", f"{where}: {report.get('message', '')}")
    if outcome == "not_json":
        return Outcome("wrong_answer", f"{where}: the return value is not JSON ({report.get('message', '')})")
    if outcome != "ok" or "value" not in report:
        return Outcome("runtime_error", f"{where}: the program ended before returning a value ({outcome})")
    value_text = str(report["value"])
    try:
        value = json.loads(value_text)
    except ValueError:
        return Outcome("wrong_answer", f"{where}: the return value is not JSON")
    difference = value_difference(expected_value, value, test.output, value_text)
    if difference is not None:
        return Outcome("wrong_answer", f"{where}: {difference}")
    return None
