"""The supervisor's start-up, with stand-in components (short Python processes)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from tests.launch.supervised import load_supervisor

supervisor = load_supervisor()


def exited(tmp_path: Path, name: str, code: str) -> object:
    """A component that has already run `code` and exited."""
    component = supervisor.Component(name, [sys.executable, "-c", code], tmp_path / f"{name}.log")
    component.start(dict(os.environ))
    component.process.wait(timeout=30)
    return component


def test_a_generator_that_came_up_and_died_is_not_a_failed_start(tmp_path: Path) -> None:
    watcher = supervisor.Supervisor(
        supervisor.Recipe(learner={}, ready_timeout_s=5), tmp_path, resume=False, max_steps=None
    )
    # connected, then killed while the supervisor still waited for another generator: the watch
    # loop restarts it, the run goes on
    came_up = exited(tmp_path, "generator1", "print('learner_connected'); raise SystemExit(-9)")
    watcher.wait_ready(came_up, lambda: "learner_connected" in came_up.log.read_text())
    # one that never came up did fail to start
    never = exited(tmp_path, "generator2", "raise SystemExit(3)")
    with pytest.raises(RuntimeError, match="generator2 exited with code 3 while starting"):
        watcher.wait_ready(never, lambda: "learner_connected" in never.log.read_text())
