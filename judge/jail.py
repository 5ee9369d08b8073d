"""The judge's end of the control pipe to one runner: framed messages, every wait bounded.

Frames are an 8-byte little-endian length and the bytes (see `judge/runner.py`). The runner's
stderr (nsjail's own messages included) is drained all the time and its first bytes kept for the
verdict's detail when the jail fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import struct
import subprocess
import time
from typing import Any

HEADER = struct.Struct("<Q")
STDERR_KEPT = 4096
MAX_FRAME = 1 << 31


class JailBroken(RuntimeError):
    """The runner went away or stopped answering; `timed_out` tells which."""

    def __init__(self, message: str, *, timed_out: bool = False) -> None:
        super().__init__(message)
        self.timed_out = timed_out


class Jail:
    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        assert process.stdin and process.stdout and process.stderr
        self.process = process
        self._in = process.stdin.fileno()
        self._out = process.stdout.fileno()
        self._err = process.stderr.fileno()
        for fd in (self._in, self._out, self._err):
            os.set_blocking(fd, False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._out, selectors.EVENT_READ)
        self._selector.register(self._err, selectors.EVENT_READ)
        self._buffer = bytearray()
        self._out_open = True
        self.stderr = bytearray()

    # ---- sending -------------------------------------------------------------------------
    def send(self, data: bytes | memoryview, deadline: float) -> None:
        view = memoryview(HEADER.pack(len(data)) + bytes(data)) if len(data) < 65536 else None
        if view is None:
            self._write(memoryview(HEADER.pack(len(data))), deadline)
            view = memoryview(data)
        self._write(view, deadline)

    def send_json(self, value: Any, deadline: float) -> None:
        self.send(json.dumps(value).encode(), deadline)

    def _write(self, view: memoryview, deadline: float) -> None:
        self._selector.register(self._in, selectors.EVENT_WRITE)
        try:
            while view:
                try:
                    written = os.write(self._in, view[: 1 << 20])
                    view = view[written:]
                    continue
                except BlockingIOError:
                    pass
                except BrokenPipeError:
                    raise JailBroken("the runner closed its input") from None
                self._wait(deadline, "taking a test's input")
        finally:
            self._selector.unregister(self._in)

    # ---- receiving -----------------------------------------------------------------------
    def recv(self, deadline: float) -> bytes:
        while len(self._buffer) < HEADER.size:
            self._fill(deadline)
        (size,) = HEADER.unpack_from(self._buffer)
        if size > MAX_FRAME:
            raise JailBroken(f"the runner sent a frame of {size} bytes")
        while len(self._buffer) < HEADER.size + size:
            self._fill(deadline)
        data = bytes(self._buffer[HEADER.size : HEADER.size + size])
        del self._buffer[: HEADER.size + size]
        return data

    def recv_json(self, deadline: float) -> dict[str, Any]:
        data = self.recv(deadline)
        try:
            value = json.loads(data)
        except ValueError:
            raise JailBroken(f"the runner sent a malformed header {data[:100]!r}") from None
        if not isinstance(value, dict):
            raise JailBroken(f"the runner sent {data[:100]!r} instead of a header")
        return value

    def _fill(self, deadline: float) -> None:
        if not self._out_open:
            raise JailBroken("the runner exited")
        self._wait(deadline, "waiting for the runner")

    def _wait(self, deadline: float, doing: str) -> None:
        """Wait for any pipe event, reading whatever arrives; raise on the deadline."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise JailBroken(f"no answer from the runner while {doing}", timed_out=True)
        for key, _ in self._selector.select(remaining):
            if key.fd == self._in:
                continue
            try:
                chunk = os.read(key.fd, 1 << 20)
            except BlockingIOError:
                continue
            if key.fd == self._out:
                if chunk:
                    self._buffer += chunk
                else:
                    self._selector.unregister(self._out)
                    self._out_open = False
            elif chunk:
                if len(self.stderr) < STDERR_KEPT:
                    self.stderr += chunk[: STDERR_KEPT - len(self.stderr)]
            else:
                self._selector.unregister(self._err)

    def diagnostics(self) -> str:
        text = self.stderr.decode("utf-8", "replace").strip()
        code = self.process.poll()
        if code is not None:
            state = f"exit status {code}" if code >= 0 else f"killed by {signal.Signals(-code).name}"
            text = f"{state}; {text}" if text else state
        return text

    # ---- ending --------------------------------------------------------------------------
    def release(self) -> None:
        """Tell the runner there are no more tests (EOF on its input); it then exits."""
        if self.process.stdin is not None:
            with contextlib.suppress(OSError):
                os.close(self._in)
            self.process.stdin = None  # closed above: keep Popen from closing it again

    def finished(self, timeout: float) -> bool:
        try:
            self.process.wait(timeout)
            return True
        except subprocess.TimeoutExpired:
            return False

    def dispose(self) -> None:
        self._selector.close()
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()

    def close(self, timeout: float = 2.0) -> None:
        """Release the runner and wait for the jail to end, killing it after `timeout`."""
        self.release()
        if not self.finished(timeout):
            self.kill()
        self.dispose()

    def kill(self) -> None:
        """SIGKILL nsjail; the kernel then ends the jail's PID namespace and all in it."""
        with contextlib.suppress(OSError):
            self.process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(5)


# Jails whose runner was told to stop: nsjail takes a few milliseconds to tear the namespaces
# down, which need not delay the verdict. Every test process is already dead at this point.
_closing: list[tuple[Jail, float]] = []
LINGER_S = 5.0  # a released jail still running after this long is killed


def set_aside(jail: Jail) -> None:
    """Tell the runner to stop and leave the jail to `reap_jails`: its tests are over."""
    jail.release()
    _closing.append((jail, time.monotonic()))


def reap_jails(wait_s: float = 0.0) -> None:
    """Collect released jails that have exited; wait up to `wait_s` for the rest, then kill them."""
    deadline = time.monotonic() + wait_s
    while _closing:
        now = time.monotonic()
        for item in list(_closing):
            jail, released = item
            if jail.process.poll() is None and now < max(deadline, released + LINGER_S):
                continue
            if jail.process.poll() is None:
                jail.kill()
            jail.dispose()
            _closing.remove(item)
        if not _closing or time.monotonic() >= deadline:
            return
        time.sleep(0.01)
