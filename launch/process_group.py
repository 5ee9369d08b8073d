"""Stopping a component and everything it started: the one way, used by every program that
starts components (the supervisor, the benchmarks, the tests).

A component is started as the leader of a session of its own (`start_new_session=True`), so its
pid is also its process group and session id. Engines and worker pools start children that may
move to process groups of their own, and children outlive a leader that was killed: the session
sweep finds those.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path


def kill_session(session: int) -> None:
    """SIGKILL every process of a session."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # the fields after the command name: state ppid pgrp session ...
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[3]) == session:
                os.kill(int(stat.parent.name), signal.SIGKILL)
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile, or not ours to read


def stop_process_group(process: subprocess.Popen, grace_s: float) -> int | None:
    """SIGTERM to the leader's process group, SIGKILL after `grace_s`; then SIGKILL whatever of
    its session is left. Returns the leader's exit code (None if it could not be reaped)."""
    group = process.pid
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=grace_s)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(group, signal.SIGKILL)
    kill_session(group)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=5.0)
    return process.poll()
