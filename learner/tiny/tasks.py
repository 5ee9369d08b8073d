"""The tiny default's tasks: synthetic arithmetic (math) and small programs (code).

Both come with worked solutions in the response format the recipe rewards (reasoning inside
`<think>`, then a `\\boxed{}` answer or a ```python block), used by the warm start; train and
held-out splits are disjoint by construction (distinct prompts, split by a seeded hash).
`python -m learner.tiny.tasks --out DIR` writes math_{train,heldout}.jsonl and
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


# The warm start imitates a teacher that works a problem out on some items and answers at a
# glance on the rest. Worked solutions are always right; glances go wrong in a natural way as
# problems grow (a slip in a longer sum, code crammed into one expression without the
# parentheses it needs). RL has to find out that working it out pays, which is the behaviour
# the recipe rewards: held-out accuracy and response length grow together.
CAREFUL_FRACTION = 0.3


def math_items(count: int, seed: int, careful_fraction: float = CAREFUL_FRACTION) -> Iterator[dict[str, Any]]:
    """Sums of 2 to 4 one-digit numbers (level = number of terms - 1), with worked running totals."""
    rng = random.Random(f"math/{seed}")
    seen: set[str] = set()
    for _ in range(count * 100):  # bounded: asking for more problems than exist fails clearly
        if len(seen) == count:
            return
        terms = [rng.randint(1, 9) for _ in range(rng.randint(2, 4))]
        expression = " + ".join(map(str, terms))
        careful = rng.random() < careful_fraction
        if expression in seen:
            continue
        seen.add(expression)
        total, steps = terms[0], []
        for term in terms[1:]:
            steps.append(f"{total} + {term} = {total + term}")
            total += term
        if careful:
            reasoning, boxed = ", ".join(steps) + "\n", total
        else:
            boxed = total if len(terms) == 2 else total + rng.choice((-2, -1, 1, 2))
            reasoning = ""
        yield {
            "id": f"math-{len(seen) - 1}",
            "prompt": f"What is {expression}?{MATH_SUFFIX}",
            "answer": str(total),
            "level": len(terms) - 1,
            "worked": careful,
            "solution": f"{reasoning}</think>\nThe answer is \\boxed{{{boxed}}}.",
        }
    raise ValueError(f"math_items: only {len(seen)} distinct problems found, {count} asked")


# Formulas are built from these operators and small integers only, so eval() is safe here.
_OPS = {"+": "plus", "-": "minus", "*": "times"}


def code_items(count: int, seed: int, careful_fraction: float = CAREFUL_FRACTION) -> Iterator[dict[str, Any]]:
    """Two-step programs: stdin/stdout `(n OP1 k1) OP2 k2` and call-based `Solution.solve(a, b)`.

    A worked solution applies one operation per line; a glance writes the whole formula as one
    expression, which is wrong whenever a `*` follows a `+` or `-` (the missing parentheses).
    """
    rng = random.Random(f"code/{seed}")
    seen: set[str] = set()
    for _ in range(count * 100):
        if len(seen) == count:
            return
        # Mostly `+`/`-` then `*`, so most glances meet the precedence trap (factors are >= 2, so
        # the trap always changes the result); the rest start with `*` and have no trap.
        op1 = rng.choice("+-+-*")
        op2 = "*" if op1 in "+-" else rng.choice("+-")
        k1 = rng.randint(1, 19) if op1 in "+-" else rng.randint(2, 9)
        k2 = rng.randint(2, 9) if op2 == "*" else rng.randint(1, 19)
        call_based = rng.random() < 0.5
        careful = rng.random() < careful_fraction
        var = "a" if call_based else "n"
        words = f"{var} {_OPS[op1]} {k1}, then {_OPS[op2]} {k2}"
        if call_based:
            prompt = f"Write a method solve(self, a, b) of class Solution that returns {words}, then plus b."
        else:
            prompt = f"Read an integer n from standard input and print {words}."
        if prompt in seen:
            continue
        seen.add(prompt)
        right = f"({var} {op1} {k1}) {op2} {k2}"
        steps = [f"{var} = {var} {op1} {k1}", f"{var} = {var} {op2} {k2}"]
        glance = f"{var} {op1} {k1} {op2} {k2}"
        inputs = [(rng.randint(0, 99), rng.randint(0, 9)) for _ in range(4)]
        if call_based:
            body = [*steps, "return a + b"] if careful else [f"return {glance} + b"]
            code = "class Solution:\n    def solve(self, a, b):\n"
            code += "".join(f"        {line}\n" for line in body)
            tests = [
                {"input": f"{a}\n{b}", "output": json.dumps(eval(f"{right} + b", {"a": a, "b": b}))}
                for a, b in inputs
            ]
            extra: dict[str, Any] = {"fn_name": "solve"}
        else:
            body = [*steps, "print(n)"] if careful else [f"print({glance})"]
            code = "n = int(input())\n" + "".join(f"{line}\n" for line in body)
            tests = [{"input": f"{n}\n", "output": f"{eval(right, {'n': n})}\n"} for n, _ in inputs]
            extra = {}
        yield {
            "id": f"code-{len(seen) - 1}",
            "prompt": f"{prompt}{CODE_SUFFIX}",
            "tests": tests,
            **extra,
            "level": 1 + (op2 == "*" and op1 != "*"),  # 2: the glance's precedence trap applies
            "worked": careful,
            "solution": f"{words}\n</think>\n```python\n{code}```",
        }
    raise ValueError(f"code_items: only {len(seen)} distinct programs found, {count} asked")


def split(items: list[dict[str, Any]], heldout_fraction: float, seed: int) -> tuple[list, list]:
    """Disjoint train / held-out lists, decided by a seeded hash of each prompt."""

    def heldout(item: dict[str, Any]) -> bool:
        digest = hashlib.sha256(f"{seed}/{item['prompt']}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64 < heldout_fraction

    return [i for i in items if not heldout(i)], [i for i in items if heldout(i)]


def write_tasks(
    out: Path,
    math_count: int = 2000,
    code_count: int = 600,
    seed: int = 0,
    heldout_fraction: float = 0.1,
    careful_fraction: float = CAREFUL_FRACTION,
) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for kind, items in (
        ("math", list(math_items(math_count, seed, careful_fraction))),
        ("code", list(code_items(code_count, seed, careful_fraction))),
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
    parser.add_argument("--careful-fraction", type=float, default=CAREFUL_FRACTION)
    args = parser.parse_args()
    paths = write_tasks(args.out, args.math, args.code, args.seed, careful_fraction=args.careful_fraction)
    for name, path in paths.items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
