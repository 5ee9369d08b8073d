"""Running `launch/all.sh` from a test: a scaled-down tiny recipe, the supervisor as a child
process, and what its run directory holds afterwards."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]


def scaled_tiny(generators: int = 2) -> dict[str, Any]:
    """launch/recipes/tiny.yaml with a small tiny model build (cheap to make on a fresh machine);
    callers shrink the schedule. Derived rather than written out, so that it follows the recipe."""
    recipe = yaml.safe_load((ROOT / "launch/recipes/tiny.yaml").read_text())
    # A warm start long enough that some completions are right (rewards vary within groups and
    # steps train), short enough to build in about a minute; one size for every test, one build.
    recipe["tiny"].update(math_prompts=300, code_prompts=100, warm_start_steps=200)
    recipe["generators"] = generators
    recipe["ready_timeout_s"] = 300
    return recipe


def write_recipe(path: Path, recipe: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(recipe))
    return path


class SupervisorRun:
    """`launch/all.sh ARGS` as a child process, with what a test needs to watch and poke it.

    all.sh checks the set-up (a fraction of a second once done) and then execs the supervisor,
    so the child's pid is the supervisor's and signals reach it directly."""

    def __init__(self, run_dir: Path, *args: str) -> None:
        self.run_dir = run_dir
        self.process = subprocess.Popen(
            [str(ROOT / "launch/all.sh"), *args],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.output = ""

    @classmethod
    def start(cls, recipe: Path, run_dir: Path, *args: str) -> SupervisorRun:
        return cls(run_dir, "--recipe", str(recipe), "--run-dir", str(run_dir), *args)

    @classmethod
    def resume(cls, run_dir: Path, *args: str) -> SupervisorRun:
        return cls(run_dir, "--resume", str(run_dir), *args)

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def steps(self) -> int:
        """Train records written so far."""
        metrics = self.run_dir / "metrics.jsonl"
        return metrics.read_text().count('"kind": "train"') if metrics.exists() else 0

    def components(self) -> dict[str, dict[str, Any]]:
        return {c["name"]: c for c in json.loads((self.run_dir / "components.json").read_text())}

    def kill(self, name: str, sig: signal.Signals = signal.SIGKILL) -> int:
        """Signal one component's process (not its group: as if it died on its own); its pid."""
        pid = self.components()[name]["pid"]
        os.kill(pid, sig)
        return pid

    def wait(self, timeout_s: float) -> int:
        """The supervisor's exit code; its output is in `output`. SIGTERM after `timeout_s`."""
        try:
            self.output = self.process.communicate(timeout=timeout_s)[0]
        except subprocess.TimeoutExpired:
            self.stop()
        return self.process.returncode

    def stop(self) -> None:
        """SIGTERM, as Ctrl-C would: the supervisor stops every component before it exits."""
        if self.running:
            self.process.send_signal(signal.SIGTERM)
        if self.process.stdout is not None and not self.process.stdout.closed:
            self.output += self.process.communicate(timeout=90)[0]

    def __enter__(self) -> SupervisorRun:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.running:
            self.stop()


def wait_for(run: SupervisorRun, until: Callable[[], bool], timeout_s: float, every_s: float = 0.2) -> bool:
    """Call `until()` while the run goes on, until it is true; False if the run ended or time ran out."""
    deadline = time.monotonic() + timeout_s
    while run.running and time.monotonic() < deadline:
        if until():
            return True
        time.sleep(every_s)
    return False


def metrics(run_dir: Path, kind: str = "train") -> list[dict[str, Any]]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def session_leftovers(sessions: set[int], grace_s: float = 10.0) -> list[str]:
    """`ps` lines of live processes still in any of `sessions` (a component's leader starts one)
    once `grace_s` has passed. Zombies are dead already (their reaper is init, once their parent
    is gone); a process just sent SIGKILL may take a moment to go."""
    deadline = time.monotonic() + grace_s
    while True:
        listing = subprocess.run(
            ["ps", "-e", "-o", "pid=,sid=,stat=,comm="], capture_output=True, text=True
        ).stdout
        left = [
            line
            for line in listing.splitlines()
            if int(line.split()[1]) in sessions and not line.split()[2].startswith("Z")
        ]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.5)


def warnings(run_dir: Path, last: int = 30) -> str:
    """The last warnings and errors the components logged: what a failed assertion shows."""
    lines = []
    for log_file in sorted((run_dir / "logs").glob("*.log")):
        for line in log_file.read_text(errors="replace").splitlines():
            if '"level": "warning"' in line or '"level": "error"' in line:
                lines.append(f"{log_file.stem}: {line[:400]}")
    return "\n".join(lines[-last:])
