"""Small hand-written rows in the layouts the data sets are published in."""

from __future__ import annotations

import base64
import json
import pickle
import zlib
from typing import Any


def hub_packed(tests: list[dict[str, str]]) -> str:
    """Private tests packed as the hub packs them: JSON string -> pickle -> zlib -> base64."""
    return base64.b64encode(zlib.compress(pickle.dumps(json.dumps(tests)))).decode("utf-8")


def lcb_functional() -> dict[str, Any]:
    public = [{"input": "1\n2", "output": "3", "testtype": "functional"}]
    private = [
        {"input": "[1, 2, 3]\n10", "output": "16", "testtype": "functional"},
        {"input": "-5\n5", "output": "0", "testtype": "functional"},
    ]
    return {
        "question_title": "add-them",
        "question_content": "Return the sum of the values {0} and \\boxed{} of `a` plus `b`.",
        "platform": "leetcode",
        "question_id": "3001",
        "contest_id": "weekly-contest-380",
        "contest_date": "2024-09-14T00:00:00",
        "starter_code": "class Solution:\n    def addThem(self, a, b) -> int:\n        ",
        "difficulty": "easy",
        "public_test_cases": json.dumps(public),
        "private_test_cases": hub_packed(private),
        "metadata": json.dumps({"func_name": "addThem"}),
    }


LCB_FUNCTIONAL_SOLUTION = (
    "class Solution:\n"
    "    def addThem(self, a, b) -> int:\n"
    "        return (sum(a) if isinstance(a, list) else a) + b\n"
)
LCB_FUNCTIONAL_WRONG = "class Solution:\n    def addThem(self, a, b) -> int:\n        return b\n"


def lcb_stdin() -> dict[str, Any]:
    public = [{"input": "3 4\n", "output": "7\n", "testtype": "stdin"}]
    private = [{"input": "10 -2\n", "output": "8\n", "testtype": "stdin"}]
    return {
        "question_title": "A + B",
        "question_content": "Print A+B.\n\nInput\nA B\n",
        "platform": "atcoder",
        "question_id": "abc301_a",
        "contest_id": "abc301",
        "contest_date": "2024-12-01T00:00:00",
        "starter_code": "",
        "difficulty": "medium",
        "public_test_cases": json.dumps(public),
        "private_test_cases": json.dumps(private),  # some rows carry plain JSON
        "metadata": "{}",
    }


LCB_STDIN_SOLUTION = "a, b = map(int, input().split())\nprint(a + b)\n"
LCB_STDIN_WRONG = "a, b = map(int, input().split())\nprint(a - b)\n"

APPS_CALL = {
    "problem_id": 4001,
    "question": "Write `double(x)` returning twice x.",
    "input_output": json.dumps(
        {"fn_name": "double", "inputs": [[1], [[2, 3]]], "outputs": [[2], [[2, 3, 2, 3]]]}
    ),
    "starter_code": "def double(x):\n\t",
    "difficulty": "introductory",
    "url": "https://www.codewars.com/kata/double",
}

TACO_CALL = {
    "id": "taco-77",
    "question": "Implement `pair(a, b)` returning [a, b].",
    "input_output": json.dumps({"fn_name": "pair", "inputs": [[1, 2], [3, 4]], "outputs": [[1, 2], [3, 4]]}),
    "starter_code": "def pair(a, b):\n\t",
    "difficulty": "EASY",
    "source": "codewars",
}

TACO_STDIN = {
    "question": "Read n and print n squared.",
    "input_output": json.dumps({"inputs": [["4"], "5\n"], "outputs": [["16"], "25\n"]}),
    "starter_code": "",
    "difficulty": "MEDIUM_HARD",
    "source": "codeforces",
    "url": "https://codeforces.com/problemset/problem/1/A",
}
