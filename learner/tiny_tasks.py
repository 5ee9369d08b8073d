"""The tiny default's tasks: synthetic arithmetic (math) and small programs (code).

Both come with worked solutions in the response format the recipe rewards (reasoning inside
`<think>`, then a `\\boxed{}` answer or a ```python block), used by the warm start; train and
held-out splits are disjoint by construction (distinct prompts, split by a seeded hash).
`python -m learner.tiny_tasks --out DIR` writes math_{train,heldout}.jsonl and
code_{train,heldout}.jsonl.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

MATH_SUFFIX = "\nPlease reason step by step, and put your final answer within \\boxed{}."
CODE_SUFFIX = "\nWrite Python code to solve the problem."


def _math_problem(rng: random.Random, level: int) -> tuple[str, int, str]:
    """(expression, value, worked reasoning) of graded difficulty: 1 easiest .. 4 hardest."""
    if level == 1:
        a, b = rng.randint(0, 9), rng.randint(0, 9)
        return f"{a} + {b}", a + b, f"{a} + {b} = {a + b}"
    if level == 2:
        a, b = rng.randint(10, 99), rng.randint(1, 20)
        op = rng.choice("+-")
        value = a + b if op == "+" else a - b
        return f"{a} {op} {b}", value, f"{a} {op} {b} = {value}"
    if level == 3:
        a, b = rng.randint(2, 9), rng.randint(2, 9)
        return f"{a} * {b}", a * b, f"{a} * {b} = {a * b}"
    a, b, c = rng.randint(1, 9), rng.randint(1, 9), rng.randint(1, 9)
    return f"{a} + {b} * {c}", a + b * c, f"{b} * {c} = {b * c}, {a} + {b * c} = {a + b * c}"


def math_items(count: int, seed: int) -> Iterator[dict[str, Any]]:
    rng = random.Random(f"math/{seed}")
    seen: set[str] = set()
    for _ in range(count * 100):  # bounded: asking for more problems than exist fails clearly
        if len(seen) == count:
            return
        level = rng.randint(1, 4)
        expression, value, reasoning = _math_problem(rng, level)
        if expression in seen:
            continue
        seen.add(expression)
        yield {
            "id": f"math-{len(seen) - 1}",
            "prompt": f"What is {expression}?{MATH_SUFFIX}",
            "answer": str(value),
            "level": level,
            "solution": f"{reasoning}\n</think>\nThe answer is \\boxed{{{value}}}.",
        }
    raise ValueError(f"math_items: only {len(seen)} distinct problems found, {count} asked")


# Formulas are built from these operators and small integers only, so eval() is safe here.
_OPS = {"+": "plus", "-": "minus", "*": "times"}


def code_items(count: int, seed: int) -> Iterator[dict[str, Any]]:
    """stdin/stdout programs `print((n OP1 k1) OP2 k2)` and call-based `Solution.solve(a, b)`."""
    rng = random.Random(f"code/{seed}")
    seen: set[str] = set()
    for _ in range(count * 100):
        if len(seen) == count:
            return
        op1, op2 = rng.choice(list(_OPS)), rng.choice(list(_OPS))
        k1, k2 = rng.randint(1, 9), rng.randint(1, 9)
        two_steps = rng.random() < 0.5
        call_based = rng.random() < 0.5
        var = "a" if call_based else "n"
        formula = f"({var} {op1} {k1}) {op2} {k2}" if two_steps else f"{var} {op1} {k1}"
        words = f"{var} {_OPS[op1]} {k1}, then {_OPS[op2]} {k2}" if two_steps else f"{var} {_OPS[op1]} {k1}"
        if call_based:
            formula, words = f"{formula} + b", f"{words}, then plus b"
            prompt = f"Write a method solve(self, a, b) of class Solution that returns {words}."
        else:
            prompt = f"Read an integer n from standard input and print {words}."
        if prompt in seen:
            continue
        seen.add(prompt)
        inputs = [(rng.randint(0, 99), rng.randint(0, 9)) for _ in range(4)]
        if call_based:
            code = f"class Solution:\n    def solve(self, a, b):\n        return {formula}"
            tests = [
                {"input": f"{a}\n{b}", "output": json.dumps(eval(formula, {"a": a, "b": b}))}
                for a, b in inputs
            ]
            extra: dict[str, Any] = {"fn_name": "solve"}
        else:
            code = f"n = int(input())\nprint({formula})"
            tests = [{"input": f"{n}\n", "output": f"{eval(formula, {'n': n})}\n"} for n, _ in inputs]
            extra = {}
        yield {
            "id": f"code-{len(seen) - 1}",
            "prompt": f"{prompt}{CODE_SUFFIX}",
            "tests": tests,
            **extra,
            "solution": f"{words}\n</think>\n```python\n{code}\n```",
        }
    raise ValueError(f"code_items: only {len(seen)} distinct programs found, {count} asked")


def split(items: list[dict[str, Any]], heldout_fraction: float, seed: int) -> tuple[list, list]:
    """Disjoint train / held-out lists, decided by a seeded hash of each prompt."""

    def heldout(item: dict[str, Any]) -> bool:
        digest = hashlib.sha256(f"{seed}/{item['prompt']}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64 < heldout_fraction

    return [i for i in items if not heldout(i)], [i for i in items if heldout(i)]


def write_tasks(
    out: Path, math_count: int = 2000, code_count: int = 600, seed: int = 0, heldout_fraction: float = 0.1
) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for kind, items in (
        ("math", list(math_items(math_count, seed))),
        ("code", list(code_items(code_count, seed))),
    ):
        train, heldout = split(items, heldout_fraction, seed)
        for name, part in (("train", train), ("heldout", heldout)):
            path = out / f"{kind}_{name}.jsonl"
            path.write_text("".join(json.dumps(item) + "\n" for item in part))
            paths[f"{kind}_{name}"] = path
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--math", type=int, default=2000)
    parser.add_argument("--code", type=int, default=600)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for name, path in write_tasks(args.out, args.math, args.code, args.seed).items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
