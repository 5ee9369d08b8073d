"""Judge benchmark: sandboxed code against bare subprocesses, daemon math against in-process math-verify.

(1) code: N correct submissions of a stdin problem with T tests each, through the judge daemon
    with W workers (one jail per submission), against a bare loop of
    `subprocess.run([python, solution])` per test with the same parallelism (W threads) and the
    same interpreter, measured in the same run.
(2) math: M (response, answer) pairs through the daemon with W_math workers, against
    math-verify's parse + verify called in this process on one core.
(3) http: the same code submissions as (1), through the daemon's HTTP face (`POST /judge`, up to
    64 requests at once from an aiohttp client) against through ZeroMQ (`JudgeClient`), with the
    same daemon in the same run.
The comparisons alternate their sides in rounds, so that the load of other programs on a
shared machine falls on all alike; the times are summed over the rounds.

Prints its figures, then as the last line:
    judge: code_overhead=<sandboxed time / bare time> math_per_core=<daemon rate per worker / in-process rate>
           http_overhead=<HTTP time / ZeroMQ time>
Targets: code_overhead <= 1.3, math_per_core >= 0.8, http_overhead <= 1.2.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction
from pathlib import Path

from judge.compare import stdout_difference
from proto.judge import JudgeRequest, TestCase
from proto.judge_client import JudgeClient

ROOT = Path(__file__).resolve().parents[1]

SOLUTION = """\
import sys

def main():
    data = sys.stdin.read().split()
    n = int(data[0])
    values = sorted(map(int, data[1 : n + 1]))
    print(sum(values))
    print(" ".join(map(str, values[:10])))
    print(values[n // 2])

main()
"""


def code_tests(count: int, size: int, rng: random.Random) -> list[TestCase]:
    tests = []
    for _ in range(count):
        values = [rng.randint(-(10**6), 10**6) for _ in range(size)]
        ordered = sorted(values)
        expected = f"{sum(values)}\n{' '.join(map(str, ordered[:10]))}\n{ordered[size // 2]}\n"
        tests.append(TestCase(input=f"{size}\n{' '.join(map(str, values))}\n", output=expected))
    return tests


def math_pairs(count: int, rng: random.Random) -> list[tuple[str, str, bool]]:
    """(response, reference answer, whether they agree): fractions, radicals, sets, intervals..."""
    pairs = []
    for index in range(count):
        kind = index % 6
        a, b, c = rng.randint(2, 999), rng.randint(2, 999), rng.randint(1, 99)
        agree = rng.random() < 0.8
        if kind == 0:
            value = Fraction(a, b)
            boxed = f"\\frac{{{value.numerator}}}{{{value.denominator}}}"
            answer = (
                f"{value.numerator}/{value.denominator}"
                if agree
                else f"{value.numerator + 1}/{value.denominator}"
            )
        elif kind == 1:
            boxed, answer = str(a * b), str(a * b if agree else a * b + c)
        elif kind == 2:
            boxed = f"{a}\\sqrt{{{c + 1}}}"
            answer = f"\\sqrt{{{a * a * (c + 1)}}}" if agree else f"\\sqrt{{{a * a * (c + 1) + 1}}}"
        elif kind == 3:
            boxed = f"\\{{{a}, {b}, {c}\\}}"
            answer = f"\\{{{c},{a},{b}\\}}" if agree else f"\\{{{c},{a},{b + 1000}\\}}"
        elif kind == 4:
            low, high = sorted((a, b + 1000))
            boxed = f"({low}, {high}]"
            answer = f"({low},{high}]" if agree else f"[{low},{high}]"
        else:
            boxed = f"x^2 + {a}x + {b}"
            answer = f"{b} + {a}x + x^2" if agree else f"{b} + {a + 1}x + x^2"
        thinking = f"<think>Problem {index}: \\boxed{{0}} was a guess.</think>"
        response = f"{thinking}So the answer is \\boxed{{{boxed}}}."
        pairs.append((response, answer, agree))
    return pairs


class Daemon:
    def __init__(self, workers: int, address: str, *fields: str) -> None:
        self.address = address
        command = [
            sys.executable,
            "-m",
            "judge",
            "serve",
            f"bind={address}",
            f"workers={workers}",
            "stats_interval_s=3600",
            *fields,
        ]
        self.process = subprocess.Popen(command, cwd=ROOT, stderr=subprocess.PIPE, text=True)
        self.log: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        deadline = time.monotonic() + 120
        while not any("judge_serving" in line for line in self.log):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("judge daemon did not start:\n" + "".join(self.log))
            time.sleep(0.05)
        serving = next(line for line in self.log if "judge_serving" in line)
        self.http: str = json.loads(serving).get("http") or ""  # the port the system picked

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.log.append(line)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(60)


def judge_all(address: str, requests: list[JudgeRequest]) -> tuple[float, Counter[str]]:
    with JudgeClient(address, request_timeout_s=600) as client:
        start = time.perf_counter()
        verdicts = client.judge(requests, timeout_s=3600)
        elapsed = time.perf_counter() - start
    return elapsed, Counter(verdict.status for verdict in verdicts.values())


def judge_all_http(
    url: str, requests: list[JudgeRequest], concurrency: int = 64
) -> tuple[float, Counter[str]]:
    """The same as `judge_all`, one `POST /judge` per request, `concurrency` at once."""
    import aiohttp

    async def run() -> list[str]:
        limit = asyncio.Semaphore(concurrency)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3600)) as session:

            async def one(request: JudgeRequest) -> str:
                async with limit:
                    while True:
                        async with session.post(f"{url}/judge", json=request.model_dump()) as reply:
                            if reply.status != 503:
                                return (await reply.json())["status"]
                        await asyncio.sleep(0.05)

            return await asyncio.gather(*(one(request) for request in requests))

    start = time.perf_counter()
    statuses = asyncio.run(run())
    return time.perf_counter() - start, Counter(statuses)


def chunks(items: list, rounds: int) -> list[list]:
    size = -(-len(items) // rounds)
    return [items[i : i + size] for i in range(0, len(items), size)]


def bare_code(python: str, tests: list[TestCase], submissions: int, workers: int) -> tuple[float, int]:
    with tempfile.TemporaryDirectory() as folder:
        solution = Path(folder) / "solution.py"
        solution.write_text(SOLUTION)

        def submission(_: int) -> bool:
            for test in tests:
                result = subprocess.run(
                    [python, str(solution)], input=test.input, capture_output=True, text=True, timeout=60
                )
                if result.returncode != 0 or stdout_difference(test.output, result.stdout) is not None:
                    return False
            return True

        start = time.perf_counter()
        with ThreadPoolExecutor(workers) as pool:
            passed = sum(pool.map(submission, range(submissions)))
        return time.perf_counter() - start, passed


def in_process_math(pairs: list[tuple[str, str, bool]]) -> tuple[float, int]:
    """math-verify's own calls on the boxed answers, one after another in this process."""
    from math_verify import parse, verify

    from judge.extract import final_text, last_boxed

    logging.getLogger("math_verify").setLevel(logging.ERROR)  # its note that timeouts are off

    agreements = 0
    start = time.perf_counter()
    for response, answer, _ in pairs:
        gold = parse("\\boxed{" + answer + "}", parsing_timeout=None)  # type: ignore[arg-type]
        boxed = last_boxed(final_text(response) or "")
        predicted = parse("\\boxed{" + (boxed or "") + "}", parsing_timeout=None)  # type: ignore[arg-type]
        agreements += bool(verify(gold, predicted, timeout_seconds=None))
    return time.perf_counter() - start, agreements


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--submissions", type=int, default=200)
    parser.add_argument("--tests", type=int, default=10)
    parser.add_argument("--test-size", type=int, default=2000, help="numbers in each test's input")
    parser.add_argument("--workers", type=int, default=2, help="code: daemon workers = bare threads")
    parser.add_argument("--math-pairs", type=int, default=5000)
    parser.add_argument(
        "--math-workers",
        type=int,
        default=max(1, (os.cpu_count() or 2) - 1),
        help="math: daemon workers (default: one core left for the daemon and client)",
    )
    parser.add_argument("--python", default="/usr/bin/python3", help="interpreter of both code runs")
    parser.add_argument("--rounds", type=int, default=4, help="alternations of the two sides")
    args = parser.parse_args()
    rng = random.Random(0)
    print(f"machine: {os.cpu_count()} cores; interpreter {args.python}")

    # (1) code. The two sides alternate in rounds, so that load from other programs on the
    # machine falls on both alike.
    tests = code_tests(args.tests, args.test_size, rng)
    response = f"<think>sort and sum</think>\n```python\n{SOLUTION}```\n"
    requests = [
        JudgeRequest(id=f"code-{i}", kind="code", response=response, tests=tests)
        for i in range(args.submissions)
    ]
    bare_s = sandboxed_s = http_s = 0.0
    bare_passed = 0
    statuses: Counter[str] = Counter()
    http_statuses: Counter[str] = Counter()
    with tempfile.TemporaryDirectory() as folder:
        daemon = Daemon(args.workers, f"ipc://{folder}/bench-code.ipc", "http.bind=127.0.0.1:0")
        url = daemon.http
        try:
            judge_all(daemon.address, [r.model_copy(update={"id": f"warm-{r.id}"}) for r in requests[:4]])
            judge_all_http(url, requests[:4])
            sides = ("bare", "sandboxed", "http")
            for number, chunk in enumerate(chunks(requests, args.rounds)):
                for side in sides[number % 3 :] + sides[: number % 3]:
                    if side == "bare":
                        elapsed, passed = bare_code(args.python, tests, len(chunk), args.workers)
                        bare_s += elapsed
                        bare_passed += passed
                    elif side == "sandboxed":
                        elapsed, counted = judge_all(daemon.address, chunk)
                        sandboxed_s += elapsed
                        statuses += counted
                    else:
                        elapsed, counted = judge_all_http(url, chunk)
                        http_s += elapsed
                        http_statuses += counted
        finally:
            daemon.stop()
    n = args.submissions
    print(
        f"code bare:      {n} submissions x {args.tests} tests, {args.workers} threads: "
        f"{bare_s:.2f} s ({bare_passed} passed, {1000 * bare_s / n:.1f} ms/submission)"
    )
    print(
        f"code sandboxed: same work through the daemon, {args.workers} workers, one jail per submission: "
        f"{sandboxed_s:.2f} s ({dict(statuses)}, {1000 * sandboxed_s / n:.1f} ms/submission)"
    )
    print(
        f"code over HTTP: same work through the daemon's POST /judge, 64 at once: "
        f"{http_s:.2f} s ({dict(http_statuses)}, {1000 * http_s / n:.1f} ms/submission)"
    )
    code_overhead = sandboxed_s / bare_s
    http_overhead = http_s / sandboxed_s

    # (2) math, alternating in rounds as well
    pairs = math_pairs(args.math_pairs, rng)
    expected = sum(agree for _, _, agree in pairs)
    math_requests = [
        JudgeRequest(id=f"math-{i}", kind="math", response=response, answer=answer)
        for i, (response, answer, _) in enumerate(pairs)
    ]
    local_s = daemon_s = 0.0
    local_agree = 0
    statuses = Counter()
    with tempfile.TemporaryDirectory() as folder:
        daemon = Daemon(args.math_workers, f"ipc://{folder}/bench-math.ipc")
        try:
            for number, (pair_chunk, request_chunk) in enumerate(
                zip(chunks(pairs, args.rounds), chunks(math_requests, args.rounds), strict=True)
            ):
                for side in ("local", "daemon") if number % 2 == 0 else ("daemon", "local"):
                    if side == "local":
                        elapsed, agreed = in_process_math(pair_chunk)
                        local_s += elapsed
                        local_agree += agreed
                    else:
                        elapsed, counted = judge_all(daemon.address, request_chunk)
                        daemon_s += elapsed
                        statuses += counted
        finally:
            daemon.stop()
    local_rate = len(pairs) / local_s
    print(
        f"math in-process: {len(pairs)} pairs on one core: {local_s:.2f} s, {local_rate:.0f} pairs/s "
        f"({local_agree} equivalent, {expected} by construction)"
    )
    per_worker = len(pairs) / daemon_s / args.math_workers
    print(
        f"math daemon:     {len(pairs)} pairs, {args.math_workers} workers: {daemon_s:.2f} s, "
        f"{per_worker:.0f} pairs/s per worker ({dict(statuses)})"
    )
    math_per_core = per_worker / local_rate
    print(
        f"judge: code_overhead={code_overhead:.2f} math_per_core={math_per_core:.2f} "
        f"http_overhead={http_overhead:.2f}"
    )


if __name__ == "__main__":
    main()
