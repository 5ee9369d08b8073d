"""The tiny default's tasks: splits are disjoint, and every worked solution passes its own checks."""

from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path

from learner.tiny.tasks import code_items, math_items, write_tasks
from proto.prompt import load_prompts


def test_splits_are_disjoint_and_load_as_prompt_sets(tmp_path: Path) -> None:
    paths = write_tasks(tmp_path, math_count=300, code_count=100)
    for kind in ("math", "code"):
        train = load_prompts(paths[f"{kind}_train"], kind)
        heldout = load_prompts(paths[f"{kind}_heldout"], kind)
        assert train and heldout
        assert not {p.prompt for p in train} & {p.prompt for p in heldout}
        assert not {p.id for p in train} & {p.id for p in heldout}


def test_math_solutions_box_the_answer_when_worked_out() -> None:
    items = list(math_items(300, seed=1, careful_fraction=0.3))
    for item in items:
        expression = item["prompt"].removeprefix("What is ").split("?")[0]
        assert str(eval(expression)) == item["answer"]
        (boxed,) = re.findall(r"\\boxed\{(-?\d+)\}", item["solution"].split("</think>")[-1])
        reasoning = item["solution"].split("</think>")[0]
        terms = expression.count("+") + 1
        if item["worked"]:
            # the running totals end on the answer
            assert boxed == item["answer"] and reasoning.rstrip().endswith(f"= {item['answer']}")
        else:
            # a glance has no reasoning; right on two terms, a slip of 1 or 2 beyond
            assert reasoning == ""
            assert (boxed == item["answer"]) == (terms == 2)
            assert abs(int(boxed) - int(item["answer"])) <= 2
    assert 0.2 < sum(i["worked"] for i in items) / len(items) < 0.4


def passes(item: dict, code: str) -> bool:
    for test in item["tests"]:
        if "fn_name" in item:
            namespace: dict = {}
            exec(code, namespace)
            args = [json.loads(line) for line in test["input"].splitlines()]
            if json.loads(test["output"]) != getattr(namespace["Solution"](), item["fn_name"])(*args):
                return False
        else:
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                exec(code, {"input": io.StringIO(test["input"]).readline})
            if out.getvalue() != test["output"]:
                return False
    return True


def test_worked_code_passes_and_glances_fail_exactly_on_the_precedence_trap() -> None:
    items = list(code_items(200, seed=1, careful_fraction=0.3))
    for item in items:
        code = item["solution"].split("```python\n")[1].split("```")[0]
        if item["worked"]:
            assert passes(item, code)
        else:
            # level 2: a `*` after a `+` or `-`, where the one-line formula needs parentheses
            assert passes(item, code) == (item["level"] == 1)
    assert 0.7 < sum(i["level"] == 2 for i in items) / len(items) < 0.9
