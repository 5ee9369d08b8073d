"""The supervisor's start-up and stop, with stand-in components (short Python processes)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from launch.process_group import stop_process_group
from launch.recipe import load_recipe
from launch.supervisor import Component, Supervisor
from tests.launch.supervised import ROOT


def exited(tmp_path: Path, name: str, code: str) -> Component:
    """A component that has already run `code` and exited."""
    component = Component(name, [sys.executable, "-c", code], tmp_path / f"{name}.log")
    component.start(dict(os.environ))
    assert component.process is not None
    component.process.wait(timeout=30)
    return component


def test_a_generator_that_came_up_and_died_is_not_a_failed_start(tmp_path: Path) -> None:
    recipe = load_recipe(ROOT / "launch/recipes/tiny.yaml", ["ready_timeout_s=5"])
    watcher = Supervisor(recipe, tmp_path, resume=False, max_steps=None)
    # connected, then killed while the supervisor still waited: the watch loop restarts it
    came_up = exited(tmp_path, "generator1", "print('up'); raise SystemExit(-9)")
    watcher.wait_ready(came_up, lambda: "up" in came_up.log.read_text())
    # one that never came up did fail to start
    never = exited(tmp_path, "generator2", "raise SystemExit(3)")
    with pytest.raises(RuntimeError, match="generator2 exited with code 3 while starting"):
        watcher.wait_ready(never, lambda: False)


def test_before_the_first_generator_connects_any_that_dies_is_a_failed_start(tmp_path: Path) -> None:
    recipe = load_recipe(ROOT / "launch/recipes/tiny.yaml", ["ready_timeout_s=5"])
    watcher = Supervisor(recipe, tmp_path, resume=False, max_steps=None)
    slow = Component("generator0", [sys.executable, "-c", "import time; time.sleep(30)"], tmp_path / "g0.log")
    slow.start(dict(os.environ))
    try:
        dead = exited(tmp_path, "generator1", "raise SystemExit(3)")
        with pytest.raises(RuntimeError, match="generator1 exited with code 3 while starting"):
            watcher.wait_ready(slow, lambda: False, others=[dead])
    finally:
        slow.stop(grace_s=0)


def test_generators_that_join_later_are_announced_or_time_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recipe = load_recipe(ROOT / "launch/recipes/tiny.yaml", ["generators=3", "ready_timeout_s=5"])
    watcher = Supervisor(recipe, tmp_path, resume=False, max_steps=None)
    watcher.logs.mkdir()
    for generator in watcher.generators:
        generator.argv = [sys.executable, "-c", "import time; time.sleep(30)"]
        generator.start(dict(os.environ))
    connected = {"gen0"}
    monkeypatch.setattr(watcher, "connected_generators", lambda: set(connected))
    now = time.monotonic()
    watcher.joining = {"generator0": now + 60, "generator1": now + 60, "generator2": now - 1}
    try:
        assert watcher.joined() == 1 and set(watcher.joining) == {"generator1", "generator2"}
        connected.add("gen1")
        # generator2 is alive and past its deadline: the run stops and names it
        with pytest.raises(TimeoutError, match="generator2 did not report ready within 5 s"):
            watcher.watch_joining()
        assert set(watcher.joining) == {"generator2"}
    finally:
        for generator in watcher.generators:
            generator.stop(grace_s=0)


def test_components_bind_their_own_ports_unless_the_recipe_names_one(tmp_path: Path) -> None:
    tiny = ROOT / "launch/recipes/tiny.yaml"
    free = Supervisor(load_recipe(tiny), tmp_path, resume=False, max_steps=None)
    assert free.judge.config.bind == "tcp://127.0.0.1:*"
    assert free.learner.config.dispatch.address == "tcp://127.0.0.1:*"
    named = load_recipe(
        tiny, ["judge.bind=tcp://0.0.0.0:6000", "learner.dispatch.address=tcp://0.0.0.0:6001"]
    )
    fixed = Supervisor(named, tmp_path, resume=False, max_steps=None)
    assert fixed.judge.config.bind == "tcp://0.0.0.0:6000"
    assert fixed.learner.config.dispatch.address == "tcp://0.0.0.0:6001"
    assert fixed.learner.config.run_dir == tmp_path


def test_stopping_a_group_stops_children_in_groups_of_their_own(tmp_path: Path) -> None:
    # the leader starts a child in a process group of its own (as worker pools do), then ignores
    # SIGTERM: the grace ends, and the session sweep finds the child
    code = (
        "import os, signal, subprocess, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "sleeper = 'import os, time; os.setpgid(0, 0); time.sleep(60)'\n"
        "child = subprocess.Popen([sys.executable, '-c', sleeper])\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    leader = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    assert leader.stdout is not None
    child = int(leader.stdout.readline())
    started = time.monotonic()
    stop_process_group(leader, grace_s=1.0)
    assert leader.poll() is not None and time.monotonic() - started < 10
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and _alive(child):
        time.sleep(0.1)
    assert not _alive(child)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_a_resumed_run_binds_free_ports_again_where_the_recipe_named_none(tmp_path: Path) -> None:
    from launch.recipe import Recipe
    from proto.config import load

    first = Supervisor(load_recipe(ROOT / "launch/recipes/tiny.yaml"), tmp_path, resume=False, max_steps=None)
    first.write_configs()
    again = Supervisor(load(Recipe, tmp_path / "recipe.yaml"), tmp_path, resume=True, max_steps=None)
    assert again.judge.config.bind == "tcp://127.0.0.1:*"
    assert again.learner.config.dispatch.address == "tcp://127.0.0.1:*"
    assert again.recipe.learner == first.recipe.learner
