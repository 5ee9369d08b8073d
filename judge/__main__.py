"""Command line: `python -m judge serve ...` and `python -m judge check ...` (see docs/judge.md)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import structlog

from judge.config import ConfigError, load_config, parse_override
from judge.logs import configure_logging
from judge.sandbox import SandboxUnavailable
from proto.curve import CurveClientKeys
from proto.sockets import InsecureBindError

EXIT_CONFIG = 2
EXIT_NO_SANDBOX = 3

log = structlog.get_logger("judge")


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="YAML file with JudgeConfig fields")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any field, e.g. sandbox.limits.output_limit_mb=8",
    )
    parser.add_argument("--workers", type=int, help="worker processes (default 2)")
    parser.add_argument("--time-limit-s", type=float, help="default CPU seconds per test")
    parser.add_argument("--memory-limit-mb", type=int, help="default memory per test process")
    parser.add_argument("--math-timeout-s", type=float, help="deadline of one math request")
    parser.add_argument(
        "--unsafe-no-sandbox",
        action="store_true",
        default=None,
        help="run programs WITHOUT nsjail (dangerous; logs a warning on every start)",
    )
    parser.add_argument("--log-level", default="info")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m judge", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the judge daemon (ZeroMQ ROUTER)")
    serve.add_argument("--bind", help="endpoint, default tcp://127.0.0.1:5555 (off loopback only with CURVE)")
    serve.add_argument("--queue-limit", type=int, help="requests waiting before `busy` answers")
    serve.add_argument("--max-request-mb", type=int, help="largest request frame")
    serve.add_argument("--drain-timeout-s", type=float, help="SIGTERM: time to finish in-flight work")
    serve.add_argument("--stats-interval-s", type=float, help="seconds between stats log lines")
    serve.add_argument("--curve-secret", type=Path, help="this server's CURVE secret key file")
    serve.add_argument("--curve-clients", type=Path, help="directory of allowed clients' public keys")
    _common(serve)
    check = commands.add_parser("check", help="judge JSON Lines from stdin, verdict lines on stdout")
    check.add_argument("--connect", help="a running daemon's endpoint; default: a local worker pool")
    check.add_argument("--server-key", type=Path, help="the daemon's CURVE public key file")
    check.add_argument("--client-secret", type=Path, help="this client's CURVE secret key file")
    check.add_argument("--timeout-s", type=float, default=600.0, help="per request, with --connect")
    _common(check)
    return parser


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    overrides = dict(parse_override(text) for text in args.set)
    flags = {
        "bind": "bind",
        "workers": "workers",
        "queue_limit": "queue_limit",
        "max_request_mb": "max_request_mb",
        "drain_timeout_s": "drain_timeout_s",
        "stats_interval_s": "stats_interval_s",
        "curve_secret": "curve_secret",
        "curve_clients": "curve_clients",
        "math_timeout_s": "math_timeout_s",
        "time_limit_s": "sandbox.limits.time_limit_s",
        "memory_limit_mb": "sandbox.limits.memory_limit_mb",
        "unsafe_no_sandbox": "sandbox.unsafe_no_sandbox",
    }
    for attribute, dotted in flags.items():
        value = getattr(args, attribute, None)
        if value is not None:
            overrides[dotted] = str(value) if isinstance(value, Path) else value
    return overrides


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    configure_logging(args.log_level)
    try:
        config = load_config(args.config, _overrides(args))
    except ConfigError as exc:
        print(f"judge: bad configuration: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        if args.command == "serve":
            from judge.daemon import serve

            serve(config)
        else:
            from judge.check import check_local, check_remote

            if args.connect:
                curve = None
                if args.server_key is not None:
                    curve = CurveClientKeys(args.server_key, args.client_secret)
                check_remote(args.connect, sys.stdin, sys.stdout, curve=curve, timeout_s=args.timeout_s)
            else:
                check_local(config, sys.stdin, sys.stdout)
    except SandboxUnavailable as exc:
        log.error("judge_refuses_to_start", reason=str(exc))
        print(f"judge: refusing to start: {exc}", file=sys.stderr)
        return EXIT_NO_SANDBOX
    except (InsecureBindError, OSError, FileNotFoundError) as exc:
        print(f"judge: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    return 0


if __name__ == "__main__":
    sys.exit(main())
