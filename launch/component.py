"""One supervised component: a process of its own session, its log, its ready file, restarts."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel

from launch.process_group import stop_process_group

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Component:
    name: str
    argv: list[str]
    log: Path
    config: BaseModel | None = None  # what `argv` reads from its --config file
    ready_file: Path | None = None
    address: str = ""
    process: subprocess.Popen | None = None
    restarts: int = 0
    env: dict[str, str] = field(default_factory=dict)  # its own, over the supervisor's (its GPUs)

    def start(self, env: dict[str, str]) -> None:
        if self.ready_file is not None:
            self.ready_file.unlink(missing_ok=True)  # a restart announces itself anew
        with self.log.open("ab") as out:
            # A session of its own: stopping the component stops everything it started.
            self.process = subprocess.Popen(
                self.argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**env, **self.env},
                cwd=ROOT,
                start_new_session=True,
            )

    @property
    def exit_code(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def stop(self, grace_s: float) -> None:
        if self.process is not None:
            stop_process_group(self.process, grace_s)

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"
