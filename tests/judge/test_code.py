"""Code verdicts through the real nsjail sandbox: every status, in both LiveCodeBench formats."""

from __future__ import annotations

import pytest

from judge.code_check import judge_code
from judge.config import SandboxConfig
from judge.sandbox import Sandbox
from tests.judge.conftest import code_request

ADD = "a, b = map(int, input().split())\nprint(a + b)"
TWO_SUM = """
class Solution:
    def twoSum(self, nums: List[int], target: int) -> List[int]:
        seen = {}
        for i, x in enumerate(nums):
            if target - x in seen:
                return [seen[target - x], i]
            seen[x] = i
"""
TWO_SUM_TESTS = [("[2,7,11,15]\n9", "[0, 1]"), ("[3,2,4]\n6", "[1,2]"), ("[3,3]\n6", "[0,1]")]


def call(body: str) -> str:
    """A call-based solution whose method `f(self, x)` runs `body` (x is the argument)."""
    indented = "\n".join("        " + line for line in body.splitlines())
    return f"class Solution:\n    def f(self, x):\n{indented}\n"


def test_stdio_accepted_ignores_trailing_whitespace_and_blank_lines(sandbox: Sandbox) -> None:
    source = "import sys\nfor line in sys.stdin:\n    print(sum(map(int, line.split())), ' ')\nprint()"
    request = code_request(source, [("1 2\n3 4\n", "3\n7"), ("10 20", "30\n\n\n")])
    outcome = judge_code(request, sandbox)
    assert (outcome.status, outcome.detail) == ("accepted", "passed all 2 tests")


def test_stdio_leading_whitespace_and_inner_blank_lines_matter(sandbox: Sandbox) -> None:
    assert judge_code(code_request("print(' 3')", [("", "3")]), sandbox).status == "wrong_answer"
    assert judge_code(code_request("print('3\\n\\n4')", [("", "3\n4")]), sandbox).status == "wrong_answer"


def test_stdio_wrong_answer_names_the_test_and_line(sandbox: Sandbox) -> None:
    outcome = judge_code(code_request(ADD, [("1 2", "3"), ("2 2", "5"), ("0 0", "0")]), sandbox)
    assert outcome.status == "wrong_answer"
    assert outcome.detail == "test 2/3: line 1: expected '5', got '4'"


def test_call_based_accepted_with_starter_imports(sandbox: Sandbox) -> None:
    request = code_request(TWO_SUM, TWO_SUM_TESTS, fn_name="twoSum")
    outcome = judge_code(request, sandbox)
    assert outcome.status == "accepted", outcome.detail


def test_call_based_compares_parsed_values(sandbox: Sandbox) -> None:
    tuple_back = call("return (x, [x, None], {'k': 1.5})")
    request = code_request(tuple_back, [("3", '[3, [3, null], {"k": 1.5}]')], fn_name="f")
    assert judge_code(request, sandbox).status == "accepted"
    request = code_request(call("return None"), [("1", "null")], fn_name="f")
    assert judge_code(request, sandbox).status == "accepted"
    request = code_request(call("return str(x)"), [("1", "1")], fn_name="f")
    outcome = judge_code(request, sandbox)
    assert outcome.status == "wrong_answer"
    assert outcome.detail == "test 1/1: expected '1', returned '\"1\"'"


def test_call_based_prints_do_not_count_as_the_answer(sandbox: Sandbox) -> None:
    request = code_request(call("print('noise')\nreturn x * 2"), [("4", "8")], fn_name="f")
    assert judge_code(request, sandbox).status == "accepted"


def test_call_based_wrong_answer_and_unserialisable_value(sandbox: Sandbox) -> None:
    request = code_request(call("return x + 1"), [("1", "2"), ("5", "7")], fn_name="f")
    outcome = judge_code(request, sandbox)
    assert (outcome.status, outcome.detail) == ("wrong_answer", "test 2/2: expected '7', returned '6'")
    outcome = judge_code(code_request(call("return {x}"), [("1", "[1]")], fn_name="f"), sandbox)
    assert outcome.status == "wrong_answer"
    assert "not JSON" in outcome.detail


STATUS_CASES = [
    # (status, stdio program, call-based method body, extra request fields)
    ("runtime_error", "print(1 // 0)", "return 1 // 0", {}),
    ("runtime_error", "import sys\nsys.exit(3)", "import sys\nsys.exit(3)", {}),
    ("time_limit", "while True:\n    pass", "while True:\n    pass", {"time_limit_s": 0.3}),
    ("time_limit", "import time\ntime.sleep(30)", "import time\ntime.sleep(30)", {"time_limit_s": 0.3}),
    ("memory_limit", "x = bytearray(2 << 30)", "x = bytearray(2 << 30)", {}),
    (
        "memory_limit",
        "x = []\nwhile True:\n    x.append(bytearray(1 << 20))",
        "y = []\nwhile True:\n    y.append(bytearray(1 << 20))",
        {"memory_limit_mb": 128},
    ),
    ("output_limit", "while True:\n    print('x' * 4096)", "while True:\n    print('x' * 4096)", {}),
    ("syntax_error", "print(1", "return (", {}),
]


@pytest.mark.parametrize("call_based", [False, True], ids=["stdio", "call"])
@pytest.mark.parametrize(("status", "program", "body", "fields"), STATUS_CASES)
def test_failure_statuses(
    sandbox: Sandbox, status: str, program: str, body: str, fields: dict[str, object], call_based: bool
) -> None:
    if call_based:
        request = code_request(call(body), [("1", "1")], fn_name="f", **fields)
    else:
        request = code_request(program, [("", "1")], **fields)
    outcome = judge_code(request, sandbox)
    assert outcome.status == status, outcome.detail
    if status != "syntax_error":
        assert outcome.detail.startswith("test 1/1: ")
    assert len(outcome.detail) <= 2000


def test_time_limit_is_per_test_and_exact(sandbox: Sandbox) -> None:
    # Each test burns 0.25 s of CPU: four of them pass a 0.4 s limit, one test of 0.5 s does not.
    burn = (
        "import time\nend = time.process_time() + float(input())\n"
        "while time.process_time() < end:\n    pass\nprint('ok')"
    )
    fine = code_request(burn, [("0.25", "ok")] * 4, time_limit_s=0.4)
    outcome = judge_code(fine, sandbox)
    assert outcome.status == "accepted", outcome.detail
    slow = code_request(burn, [("0.25", "ok"), ("0.5", "ok")], time_limit_s=0.4)
    outcome = judge_code(slow, sandbox)
    assert outcome.status == "time_limit"
    assert outcome.detail.startswith("test 2/2: CPU time limit of 0.4 s exceeded")


def test_stops_at_the_first_failing_test(sandbox: Sandbox) -> None:
    counting = "import sys\nn = int(input())\nprint(n)\nsys.stderr.write(f'ran {n}\\n')"
    outcome = judge_code(code_request(counting, [("1", "1"), ("2", "3"), ("3", "3")]), sandbox)
    assert outcome.detail == "test 2/3: line 1: expected '3', got '2'"


def test_runtime_error_detail_holds_the_traceback_tail(sandbox: Sandbox) -> None:
    outcome = judge_code(code_request("def f():\n    raise KeyError('boom')\nf()", [("", "")]), sandbox)
    assert outcome.status == "runtime_error"
    assert "KeyError: 'boom'" in outcome.detail
    assert 'File "solution.py", line 2' in outcome.detail
    assert "runner.py" not in outcome.detail


def test_call_based_missing_class_or_method_is_a_runtime_error(sandbox: Sandbox) -> None:
    outcome = judge_code(code_request("def g(x):\n    return x", [("1", "1")], fn_name="f"), sandbox)
    assert (outcome.status, outcome.detail) == (
        "runtime_error",
        "test 1/1: the program defines no class Solution or function 'f'",
    )
    outcome = judge_code(code_request(call("return x"), [("1", "1")], fn_name="g"), sandbox)
    assert outcome.status == "runtime_error"
    assert "no method 'g'" in outcome.detail


@pytest.mark.parametrize(
    "response",
    [
        "I would write a loop.",
        "<think>```python\nprint(1)\n```</think>No code after thinking.",
        "<think>```python\nprint(1)\n```",
        "```python\nprint(1)",
        "```cpp\nint main() {}\n```",
        "```python\n\n```",
    ],
    ids=["prose", "only-in-thinking", "unclosed-thinking", "unclosed-fence", "other-language", "empty"],
)
@pytest.mark.parametrize("fn_name", [None, "f"], ids=["stdio", "call"])
def test_no_code(sandbox: Sandbox, response: str, fn_name: str | None) -> None:
    request = code_request(response, [("1", "1")], fenced=False, fn_name=fn_name)
    assert judge_code(request, sandbox).status == "no_code"


def test_the_last_block_after_thinking_is_the_program(sandbox: Sandbox) -> None:
    response = "<think>```python\nprint(0)\n```</think>```python\nprint(1)\n```\nor\n```python\nprint(2)\n```"
    request = code_request(response, [("", "2")], fenced=False)
    assert judge_code(request, sandbox).status == "accepted"


@pytest.mark.parametrize("fn_name", [None, "f"], ids=["stdio", "call"])
def test_sandbox_error_when_the_jail_cannot_run(fn_name: str | None) -> None:
    broken = Sandbox(SandboxConfig(python="/nonexistent/python3"))
    broken.prepare()
    source = call("return x") if fn_name else "print(1)"
    outcome = judge_code(code_request(source, [("1", "1")], fn_name=fn_name), broken)
    assert outcome.status == "sandbox_error"
    assert "start-up" in outcome.detail


def test_bad_requests_are_answered_without_running(sandbox: Sandbox) -> None:
    outcome = judge_code(code_request(call("return x"), [("not json", "1")], fn_name="f"), sandbox)
    assert outcome.status == "bad_request" and outcome.detail.startswith("tests[0].input")
    outcome = judge_code(code_request(call("return x"), [("1", "{oops")], fn_name="f"), sandbox)
    assert outcome.status == "bad_request" and outcome.detail.startswith("tests[0].output")
    outcome = judge_code(code_request(call("return x"), [("1", "1")], fn_name="not-a-name"), sandbox)
    assert outcome.status == "bad_request" and outcome.detail.startswith("fn_name")
    outcome = judge_code(code_request("print(1)", [("", "1")], time_limit_s=10_000), sandbox)
    assert outcome.status == "bad_request" and outcome.detail.startswith("time_limit_s")
    outcome = judge_code(code_request("print(1)", [("", "1")], memory_limit_mb=1 << 20), sandbox)
    assert outcome.status == "bad_request" and outcome.detail.startswith("memory_limit_mb")


def test_a_megabyte_of_input_and_output(sandbox: Sandbox) -> None:
    numbers = " ".join(str(i) for i in range(200_000))
    source = "import sys\ndata = sys.stdin.read().split()\nprint('\\n'.join(data))"
    expected = "\n".join(numbers.split())
    outcome = judge_code(code_request(source, [(numbers, expected)] * 3), sandbox)
    assert outcome.status == "accepted", outcome.detail


def test_programs_may_write_to_tmp_only(sandbox: Sandbox) -> None:
    source = "open('/tmp/scratch', 'w').write('kept')\nprint(open('/tmp/scratch').read())"
    assert judge_code(code_request(source, [("", "kept")]), sandbox).status == "accepted"
