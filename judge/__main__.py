"""Command line: `python -m judge serve ...` and `python -m judge check ...` (see docs/judge.md)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import structlog

from judge.config import JudgeConfig
from judge.sandbox import SandboxUnavailable
from proto.config import ConfigError, add_settings_arguments, fields_help, load, parse_command_line
from proto.curve import CurveClientKeys
from proto.logs import configure_logging
from proto.sockets import InsecureBindError

RAW = argparse.RawDescriptionHelpFormatter
EXIT_CONFIG = 2
EXIT_NO_SANDBOX = 3

log = structlog.get_logger("judge")

FIELDS_HELP = f"""Settings: defaults, then --config FILE, then dotted key=value overrides, e.g.
  bind=tcp://127.0.0.1:5556 workers=8 sandbox.limits.time_limit_s=2
(sandbox.unsafe_no_sandbox=true runs programs WITHOUT nsjail: dangerous). The fields:
{fields_help(JudgeConfig)}"""


def _common(parser: argparse.ArgumentParser) -> None:
    add_settings_arguments(parser, JudgeConfig)


def build_parser(prog: str = "python -m judge") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__, epilog=FIELDS_HELP, formatter_class=RAW)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser(
        "serve",
        help="run the judge daemon (ZeroMQ ROUTER)",
        description="Run the judge daemon: verdicts for math answers and code, over ZeroMQ.",
        epilog=FIELDS_HELP,
        formatter_class=RAW,
    )
    serve.add_argument(
        "--ready-file", type=Path, help="write the bound address here once serving (bind=...:* picks a port)"
    )
    serve.add_argument(
        "--http",
        metavar="HOST:PORT",
        help="also serve HTTP (SandboxFusion's /run_code, /judge, /health, /metrics); same as http.bind=",
    )
    serve.add_argument(
        "--http-token-file",
        type=Path,
        metavar="FILE",
        help="bearer token clients must send (http.token_file=)",
    )
    _common(serve)
    check = commands.add_parser(
        "check",
        help="judge JSON Lines from stdin, verdict lines on stdout",
        description="Judge JSON Lines of JudgeRequest from stdin; Verdict lines on stdout, in input order.",
        epilog=FIELDS_HELP,
        formatter_class=RAW,
    )
    check.add_argument("--connect", help="a running daemon's endpoint; default: a local worker pool")
    check.add_argument("--server-key", type=Path, help="the daemon's CURVE public key file")
    check.add_argument("--client-secret", type=Path, help="this client's CURVE secret key file")
    check.add_argument("--timeout-s", type=float, default=600.0, help="per request, with --connect")
    _common(check)
    return parser


def main(argv: list[str] | None = None, prog: str = "python -m judge") -> int:
    args = parse_command_line(build_parser(prog), argv)
    configure_logging("judge", args.log_level)
    overrides = list(args.overrides)
    if getattr(args, "http", None):
        overrides.append(f"http.bind={args.http}")
    if getattr(args, "http_token_file", None):
        overrides.append(f"http.token_file={args.http_token_file}")
    try:
        config = load(JudgeConfig, args.config, overrides)
    except ConfigError as exc:
        print(f"judge: bad configuration: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        if args.command == "serve":
            from judge.daemon import serve

            serve(config, ready_file=args.ready_file)
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
