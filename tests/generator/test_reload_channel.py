"""The reload steps' own socket: requests reach every worker's service, failures come back as errors."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time

import pytest

from generator.reload_channel import ReloadChannel, ReloadService, remove_stale_sockets


class Recorder:
    def __init__(self, name: str) -> None:
        self.name = name
        self.calls: list[tuple[str | None, list, bool, bool]] = []

    def __call__(self, path: str | None, layout: list, begin: bool, end: bool) -> dict[str, float]:
        if path == "broken":
            raise FileNotFoundError(f"{self.name}: no such file")
        self.calls.append((path, layout, begin, end))
        return {"load_s": float(len(self.calls))}


def test_every_worker_runs_each_step_and_a_failure_is_reported() -> None:
    workers = [Recorder("w0"), Recorder("w1")]
    services = [ReloadService(worker) for worker in workers]
    channel = ReloadChannel([s.address for s in services], alive=lambda: True, timeout_s=10)
    try:
        layout = [("model.norm.weight", "float32", [16], 64)]
        assert channel.step("/dev/shm/x", layout, True, False) == {"load_s": 1.0}
        assert channel.step(None, [], False, True) == {"load_s": 2.0}
        for worker in workers:
            assert worker.calls == [("/dev/shm/x", layout, True, False), (None, [], False, True)]
        with pytest.raises(RuntimeError, match="FileNotFoundError: w0: no such file"):
            channel.step("broken", layout, True, True)
        assert channel.step(None, [], False, True) == {"load_s": 3.0}  # still serving
        assert all(oct(os.stat(s.address.removeprefix("ipc://")).st_mode)[-3:] == "600" for s in services)
    finally:
        channel.close()
    assert not any(os.path.exists(s.address.removeprefix("ipc://")) for s in services)


def test_a_dead_engine_ends_the_wait() -> None:
    silent = ReloadService(lambda path, layout, begin, end: time.sleep(30) or {})
    channel = ReloadChannel([silent.address], alive=lambda: False, timeout_s=60)
    try:
        started = time.monotonic()
        with pytest.raises(RuntimeError, match="engine died"):
            channel.step(None, [], True, True)
        assert time.monotonic() - started < 10
    finally:
        channel.close()


def test_sockets_of_dead_workers_are_removed() -> None:
    command = [sys.executable, "-c", "import os; print(os.getpid())"]
    dead = subprocess.run(command, capture_output=True, text=True)
    stale = os.path.join(tempfile.gettempdir(), f"acerl-reload-{int(dead.stdout)}-0")
    mine = os.path.join(tempfile.gettempdir(), f"acerl-reload-{os.getpid()}-0")
    for path in (stale, mine):
        open(path, "wb").close()
    try:
        assert os.path.basename(stale) in remove_stale_sockets()
        assert not os.path.exists(stale) and os.path.exists(mine)
    finally:
        for path in (stale, mine):
            if os.path.exists(path):
                os.unlink(path)
