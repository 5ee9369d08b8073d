"""Start-up checks: the judge refuses to start rather than judge code without its sandbox."""

from __future__ import annotations

import os

import structlog

from judge.code_check import judge_code
from judge.config import SandboxConfig
from judge.jail import reap_jails
from judge.sandbox import Sandbox, SandboxUnavailable
from proto.judge import JudgeRequest, TestCase

log = structlog.get_logger("judge.preflight")

_PROBE = JudgeRequest(
    id="preflight",
    kind="code",
    response="```python\nimport sys\nprint(sum(int(x) for x in sys.stdin.read().split()))\n```",
    tests=[TestCase(input="1 2 3\n", output="6\n"), TestCase(input="40 2", output="42")],
    time_limit_s=5.0,
)


def ready_sandbox(config: SandboxConfig) -> Sandbox:
    """A sandbox that has just judged a real submission correctly, or SandboxUnavailable."""
    if config.unsafe_no_sandbox:
        log.warning(
            "unsafe_no_sandbox",
            message="sandbox.unsafe_no_sandbox=true: submitted programs run WITHOUT nsjail, as this "
            "user, with network and file system access. Use only for programs you trust.",
        )
    if not os.access(config.python, os.X_OK):
        raise SandboxUnavailable(f"the jail's Python {config.python} does not exist or is not executable")
    sandbox = Sandbox(config)
    for warning in sandbox.prepare():
        log.warning("sandbox_degraded", message=warning)
    outcome = judge_code(_PROBE, sandbox)
    reap_jails(wait_s=5.0)
    if outcome.status != "accepted":
        hint = (
            ""
            if config.unsafe_no_sandbox
            else (
                " (nsjail needs user, mount, PID and network namespaces: run as root or allow "
                "unprivileged user namespaces; sandbox.unsafe_no_sandbox=true runs without it)"
            )
        )
        result = f"{outcome.status}: {outcome.detail}"
        raise SandboxUnavailable(f"a test submission was not accepted: {result}{hint}")
    log.info(
        "sandbox_ready",
        nsjail=sandbox.nsjail or None,
        python=config.python,
        cgroups=sandbox.cgroups,
        unsafe=config.unsafe_no_sandbox,
    )
    return sandbox
