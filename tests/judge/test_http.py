"""The judge's HTTP face, driven by SandboxFusion's own client and by raw requests in the shapes
RL frameworks send: a real daemon, real nsjail, real sockets."""

from __future__ import annotations

import base64
import json
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from sandbox_fusion import RunCodeRequest, RunStatus, run_code

from tests.judge_daemon import ROOT, LiveDaemon, free_port, judge_daemon

TOKEN = "s3cret-token-of-the-tests-0123456789"


def http_daemon(tmp_path: Path, **fields: object) -> tuple[LiveDaemon, str]:
    port = free_port()
    settings = {"workers": 2, "stats_interval_s": 1, "sandbox.limits.time_limit_s": 2, **fields}
    live = judge_daemon(f"ipc://{tmp_path}/judge.ipc", **{"http.bind": f"127.0.0.1:{port}", **settings})
    return live, f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    live, url = http_daemon(tmp_path_factory.mktemp("http"), **{"http.max_body_mb": 1})
    try:
        yield url
    finally:
        live.stop()


def post(url: str, body: object, **kwargs: object) -> requests.Response:
    return requests.post(url, data=json.dumps(body), timeout=60, **kwargs)  # type: ignore[arg-type]


# ---- SandboxFusion's client -------------------------------------------------------------------


def test_the_official_client_runs_python_with_stdin(served: str) -> None:
    request = RunCodeRequest(
        code="name = input()\nprint(f'hello {name}')", stdin="judge\n", language="python"
    )
    response = run_code(request, endpoint=served, max_attempts=1, client_timeout=60)
    assert response.status == RunStatus.Success
    assert response.run_result.status == "Finished"
    assert response.run_result.return_code == 0
    assert response.run_result.stdout == "hello judge\n"
    assert response.run_result.execution_time is not None and response.run_result.execution_time > 0


def test_the_official_client_sees_a_failure_with_its_traceback(served: str) -> None:
    request = RunCodeRequest(code="print('before')\n1 / 0\n", language="python")
    response = run_code(request, endpoint=served, max_attempts=1, client_timeout=60)
    assert response.status == RunStatus.Failed
    assert response.run_result.return_code == 1
    assert response.run_result.stdout == "before\n"
    assert "ZeroDivisionError" in response.run_result.stderr
    assert "Traceback" in response.run_result.stderr


def test_exit_status_syntax_error_and_time_limit(served: str) -> None:
    exited = post(f"{served}/run_code", {"code": "import sys\nsys.exit(3)", "language": "python"}).json()
    assert (exited["status"], exited["run_result"]["return_code"]) == ("Failed", 3)
    broken = post(f"{served}/run_code", {"code": "def f(:\n", "language": "python"}).json()
    assert broken["status"] == "Failed"
    assert broken["run_result"]["return_code"] == 1
    assert "SyntaxError" in broken["run_result"]["stderr"]
    spin = post(
        f"{served}/run_code", {"code": "while True: pass", "language": "python", "run_timeout": 1}
    ).json()
    assert spin["status"] == "Failed"
    assert spin["run_result"]["status"] == "TimeLimitExceeded"


def test_a_request_in_the_shape_verl_sends(served: str) -> None:
    """veRL's sandbox_fusion reward posts these fields, memory_limit_MB among them."""
    body = {
        "compile_timeout": 10,
        "run_timeout": 5,
        "code": "import sys\nprint(sum(map(int, sys.stdin.read().split())))",
        "stdin": "1 2 3\n",
        "memory_limit_MB": 512,
        "language": "python",
        "files": {},
        "fetch_files": [],
    }
    reply = post(f"{served}/run_code", body)
    assert reply.status_code == 200
    result = reply.json()
    assert result["status"] == "Success"
    assert result["run_result"]["stdout"] == "6\n"
    assert result["compile_result"] is None


def test_files_go_in_and_come_back(served: str) -> None:
    code = (
        "import os\n"
        "data = open('in/data.txt').read()\n"
        "open('out.txt', 'w').write(data.upper())\n"
        "os.mkfifo('pipe')\n"  # would block a reader that opened it plainly
        "os.symlink('/etc/passwd', 'link')\n"
        "print(len(data))"
    )
    body = {
        "code": code,
        "language": "python",
        "files": {"in/data.txt": base64.b64encode(b"abc\n").decode()},
        "fetch_files": ["out.txt", "never-written.txt", "pipe", "link"],
    }
    result = post(f"{served}/run_code", body).json()
    assert result["status"] == "Success", result
    assert result["run_result"]["stdout"] == "4\n"
    assert result["files"] == {"out.txt": base64.b64encode(b"ABC\n").decode()}


def test_the_program_runs_in_the_jail(served: str) -> None:
    code = "import os\nprint(os.getuid())\nprint(os.path.exists('/home'))\nopen('/etc/x', 'w')"
    result = post(f"{served}/run_code", {"code": code, "language": "python"}).json()
    assert result["run_result"]["stdout"].split() == ["65534", "False"]
    assert "Error" in result["run_result"]["stderr"]  # read-only or missing: not writable


def test_other_languages_and_bad_bodies_get_clear_errors(served: str) -> None:
    cpp = post(f"{served}/run_code", {"code": "int main(){}", "language": "cpp"})
    assert cpp.status_code == 400
    assert cpp.json()["status"] == "SandboxError"
    assert "language" in cpp.json()["message"] and "python" in cpp.json()["message"]
    missing = post(f"{served}/run_code", {"language": "python"})
    assert missing.status_code == 400 and missing.json()["message"].startswith("code:")
    escape = post(f"{served}/run_code", {"code": "", "language": "python", "files": {"../x": ""}})
    assert escape.status_code == 400 and "relative" in escape.json()["message"]
    not_json = requests.post(f"{served}/run_code", data=b"{not json", timeout=30)
    assert not_json.status_code == 400 and "not JSON" in not_json.json()["message"]
    too_big = requests.post(f"{served}/judge", data=b"x" * (2 << 20), timeout=30)
    assert too_big.status_code == 413
    assert requests.get(f"{served}/nowhere", timeout=30).status_code == 404
    too_long = post(f"{served}/run_code", {"code": "", "language": "python", "run_timeout": 10_000})
    assert too_long.status_code == 400 and "time_limit_s" in too_long.json()["message"]
    assert requests.get(f"{served}/health", timeout=30).json()["status"] == "ok"  # still serving


# ---- our verdicts as JSON ---------------------------------------------------------------------


def test_judge_and_batch_answer_verdicts_under_the_callers_ids(served: str) -> None:
    right = {"id": "7", "kind": "math", "response": "so \\boxed{\\frac{1}{2}}", "answer": "0.5"}
    wrong = {"id": "7", "kind": "math", "response": "so \\boxed{3}", "answer": "0.5"}
    code = {
        "id": "c1",
        "kind": "code",
        "response": "```python\nprint(int(input()) * 2)\n```",
        "tests": [{"input": "4\n", "output": "8\n"}, {"input": "5\n", "output": "10\n"}],
    }
    with ThreadPoolExecutor(2) as pool:  # the same id at once, different content: no mix-up
        first, second = pool.map(lambda body: post(f"{served}/judge", body).json(), [right, wrong])
    assert (first["id"], first["status"], first["reward"]) == ("7", "correct", 1)
    assert (second["id"], second["status"], second["reward"]) == ("7", "wrong_answer", 0)
    batch = post(f"{served}/judge/batch", {"requests": [wrong, code, right]}).json()["verdicts"]
    assert [(v["id"], v["status"]) for v in batch] == [
        ("7", "wrong_answer"),
        ("c1", "accepted"),
        ("7", "correct"),
    ]
    opened = {**right, "response": "so \\boxed{0.5}", "opened_think": True, "truncated": True}
    cut = post(f"{served}/judge", opened).json()  # the prompt opened <think>; no </think> came
    assert (cut["status"], cut["truncated"]) == ("no_answer", True)
    bad = post(f"{served}/judge", {"id": "x", "kind": "math", "response": "1"})
    assert bad.status_code == 400 and bad.json()["detail"].startswith("answer")


def test_health_and_metrics(served: str) -> None:
    post(f"{served}/run_code", {"code": "print(1)", "language": "python"})
    health = requests.get(f"{served}/health", timeout=30).json()
    assert health["status"] == "ok" and health["workers"] == 2
    text = requests.get(f"{served}/metrics", timeout=30).text
    for name in (
        "acerl_judge_up 1.0",
        "acerl_judge_queue_depth",
        "acerl_judge_in_flight",
        'acerl_judge_results_total{status="run_finished"}',
        'acerl_judge_http_request_seconds_bucket{le="0.5",route="/run_code"}',
        'acerl_judge_http_requests_total{code="200",route="/run_code"}',
    ):
        assert name in text, name


# ---- limits, drain, security ------------------------------------------------------------------


def test_a_full_queue_answers_503_with_retry_after(tmp_path: Path) -> None:
    live, url = http_daemon(tmp_path, workers=1, queue_limit=1)
    try:
        warm = post(f"{url}/run_code", {"code": "print(1)", "language": "python"})
        assert warm.status_code == 200  # the worker is up: the one slot running, one queued
        body = {"code": "import time\ntime.sleep(1.5)", "language": "python", "run_timeout": 4}
        with ThreadPoolExecutor(6) as pool:
            replies = list(pool.map(lambda _: post(f"{url}/run_code", body), range(6)))
        codes = sorted(reply.status_code for reply in replies)
        assert codes.count(200) >= 2 and 503 in codes and set(codes) <= {200, 503}, codes
        busy = next(reply for reply in replies if reply.status_code == 503)
        assert busy.headers["Retry-After"] == "1"
        assert busy.json()["status"] == "SandboxError" and "queue full" in busy.json()["message"]
    finally:
        live.stop()


def test_a_request_past_its_timeout_gets_504_and_the_judge_goes_on(tmp_path: Path) -> None:
    live, url = http_daemon(tmp_path, **{"http.request_timeout_s": 1})
    try:
        slow = post(f"{url}/run_code", {"code": "import time\ntime.sleep(3)", "language": "python"})
        assert slow.status_code == 504 and "no answer within 1 s" in slow.json()["message"]
        quick = post(f"{url}/run_code", {"code": "print('next')", "language": "python"})
        assert quick.status_code == 200 and quick.json()["run_result"]["stdout"] == "next\n"
    finally:
        live.stop()


def test_sigterm_finishes_the_request_in_flight(tmp_path: Path) -> None:
    live, url = http_daemon(tmp_path)
    body = {"code": "import time\ntime.sleep(2)\nprint('done')", "language": "python", "run_timeout": 5}
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(post, f"{url}/run_code", body)
        time.sleep(1.0)
        live.process.send_signal(signal.SIGTERM)
        reply = running.result(30)
    assert reply.status_code == 200 and reply.json()["run_result"]["stdout"] == "done\n"
    assert live.process.wait(30) == 0
    assert "judge_stopped" in live.tail()


def test_off_loopback_needs_a_token_and_the_token_is_checked(tmp_path: Path) -> None:
    command = [
        sys.executable,
        "-m",
        "judge",
        "serve",
        "--http",
        "0.0.0.0:8471",
        f"bind=ipc://{tmp_path}/j.ipc",
    ]
    refused = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2
    assert "http.token_file" in refused.stderr and "0.0.0.0:8471" in refused.stderr
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    port = free_port("0.0.0.0")
    live = judge_daemon(
        f"ipc://{tmp_path}/judge.ipc", **{"http.bind": f"0.0.0.0:{port}", "http.token_file": token_file}
    )
    try:
        url = f"http://127.0.0.1:{port}/run_code"
        body = {"code": "print(2)", "language": "python"}
        assert post(url, body).status_code == 401
        assert post(url, body, headers={"Authorization": "Bearer wrong"}).status_code == 401
        allowed = post(url, body, headers={"Authorization": f"Bearer {TOKEN}"})
        assert allowed.status_code == 200 and allowed.json()["run_result"]["stdout"] == "2\n"
        assert requests.get(f"http://127.0.0.1:{port}/health", timeout=30).status_code == 200
    finally:
        live.stop()


@pytest.mark.slow
def test_64_concurrent_clients_lose_no_request(tmp_path: Path) -> None:
    """64 clients, 4 requests each, retrying 503 as Retry-After says: every one answered, right."""
    live, url = http_daemon(tmp_path, queue_limit=32)
    latencies: list[float] = []
    answers: dict[str, str] = {}
    lock = threading.Lock()

    def client(number: int) -> None:
        with requests.Session() as session:
            for turn in range(4):
                key = f"{number}-{turn}"
                body = {
                    "code": f"print(input()[::-1], {number * 4 + turn})",
                    "stdin": key,
                    "language": "python",
                }
                started = time.monotonic()
                for _ in range(600):
                    reply = session.post(f"{url}/run_code", data=json.dumps(body), timeout=300)
                    if reply.status_code != 503:
                        break
                    time.sleep(float(reply.headers["Retry-After"]) * 0.1)
                with lock:
                    latencies.append(time.monotonic() - started)
                    answers[key] = (
                        reply.json()["run_result"]["stdout"] if reply.status_code == 200 else reply.text
                    )

    try:
        with ThreadPoolExecutor(64) as pool:
            list(pool.map(client, range(64)))
    finally:
        live.stop()
    expected = {f"{n}-{t}": f"{f'{n}-{t}'[::-1]} {n * 4 + t}\n" for n in range(64) for t in range(4)}
    assert answers == expected
    ordered = sorted(latencies)
    p50, p99 = statistics.median(ordered), ordered[int(0.99 * (len(ordered) - 1))]
    print(f"http load: 256 requests from 64 clients, p50 {p50:.2f} s, p99 {p99:.2f} s")
