"""`python -m judge check`: judge JSON Lines requests from stdin, one verdict line per request.

Verdicts are written in the order of the input lines. A line that is not a valid request gets a
`bad_request` verdict saying what is wrong, and the other lines are still judged. Without
`--connect` the command starts its own worker pool; with it, requests go to a running daemon
through `proto.judge_client.JudgeClient`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any

from pydantic import ValidationError

from judge.config import JudgeConfig
from judge.dispatch import Dispatcher
from judge.pool import WorkerPool
from judge.preflight import ready_sandbox
from proto.curve import CurveClientKeys
from proto.judge import JudgeRequest, Verdict
from proto.judge_client import JudgeClient

POLL_S = 0.05


def parse_line(number: int, line: str) -> JudgeRequest | Verdict:
    """The request on one input line, or a bad_request verdict explaining the problem."""
    try:
        data: Any = json.loads(line)
    except ValueError as exc:
        return _bad("", f"line {number}: not JSON ({exc})")
    ident = data.get("id") if isinstance(data, dict) else None
    ident = ident if isinstance(ident, str) and len(ident) <= 256 else ""
    if not isinstance(data, dict):
        return _bad(ident, f"line {number}: expected a JSON object, got {type(data).__name__}")
    try:
        return JudgeRequest.model_validate(data)
    except ValidationError as exc:
        problems = []
        for error in exc.errors(include_url=False)[:3]:
            path = ".".join(str(part) for part in error["loc"])
            message = error["msg"].removeprefix("Value error, ")
            problems.append(f"{path}: {message}" if path else message)
        return _bad(ident, f"line {number}: " + "; ".join(problems))


def _bad(ident: str, detail: str) -> Verdict:
    return Verdict(id=ident, reward=0, status="bad_request", detail=detail[:2000])


def _write(out: IO[str], verdict: Verdict) -> None:
    out.write(
        json.dumps(
            {
                "id": verdict.id,
                "reward": verdict.reward,
                "status": verdict.status,
                "detail": verdict.detail,
                "truncated": verdict.truncated,
            }
        )
        + "\n"
    )
    out.flush()


def _lines(source: IO[str]) -> Iterator[tuple[int, str]]:
    for number, line in enumerate(source, start=1):
        if line.strip():
            yield number, line


class _Ordered:
    """Verdicts by input position, written out as soon as every earlier one is known."""

    def __init__(self, out: IO[str]) -> None:
        self.out = out
        self.known: dict[int, Verdict] = {}
        self.next = 0
        self.total = 0

    def add(self, position: int, verdict: Verdict) -> None:
        self.known[position] = verdict
        while self.next in self.known:
            _write(self.out, self.known.pop(self.next))
            self.next += 1

    @property
    def waiting(self) -> int:
        return self.total - self.next


def _judge_in_order(
    source: IO[str],
    out: IO[str],
    window: int,
    submit: Callable[[int, JudgeRequest], bool],
    collect: Callable[[], Iterable[tuple[int, Verdict]]],
) -> int:
    """Read the requests, hand each to `submit` with its input position, write the verdicts in input
    order; returns the number of lines judged.

    `submit` returns False when it cannot take the request yet; `collect` (which waits a little)
    gives finished verdicts by position. At most `window` lines wait for a verdict: a slow request
    holds back the output, and without a bound the input would pile up behind it.
    """
    ordered = _Ordered(out)

    def receive() -> None:
        for position, verdict in collect():
            ordered.add(position, verdict)

    for number, line in _lines(source):
        position = ordered.total
        ordered.total += 1
        parsed = parse_line(number, line)
        if isinstance(parsed, Verdict):
            ordered.add(position, parsed)
            continue
        while ordered.waiting > window:
            receive()
        while not submit(position, parsed):
            receive()
    while ordered.waiting:
        receive()
    return ordered.total


def check_local(config: JudgeConfig, source: IO[str], out: IO[str], window: int | None = None) -> int:
    """Judge with a local worker pool; returns the number of lines judged."""
    sandbox = ready_sandbox(config.sandbox)
    pool = WorkerPool(config, cgroups=sandbox.cgroups)
    dispatcher = Dispatcher(config, pool)

    def submit(position: int, request: JudgeRequest) -> bool:
        return dispatcher.offer(position, request, position) != "busy"

    def collect() -> Iterator[tuple[int, Verdict]]:
        for waiters, verdict in dispatcher.step(POLL_S):
            for waiter in waiters:
                yield waiter, verdict

    try:
        return _judge_in_order(source, out, window or 4 * config.workers, submit, collect)
    finally:
        pool.close()


def check_remote(
    address: str,
    source: IO[str],
    out: IO[str],
    *,
    curve: CurveClientKeys | None = None,
    timeout_s: float = 600.0,
    window: int = 256,
) -> int:
    """Judge through a running daemon; returns the number of lines judged."""
    positions: dict[str, int] = {}  # request id -> input position
    with JudgeClient(address, curve=curve, request_timeout_s=timeout_s) as client:

        def submit(position: int, request: JudgeRequest) -> bool:
            if request.id in positions:
                return False  # a repeated id waits for the first one's verdict
            positions[request.id] = position
            client.submit(request)
            return True

        def collect() -> Iterator[tuple[int, Verdict]]:
            for verdict in client.poll(POLL_S):
                yield positions.pop(verdict.id), verdict

        return _judge_in_order(source, out, window, submit, collect)
