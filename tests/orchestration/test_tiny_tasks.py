"""The tiny default's tasks: splits are disjoint, and every worked solution passes its own checks."""

from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path

from learner.prompts import load_prompts
from learner.tiny_tasks import code_items, math_items, write_tasks


def test_splits_are_disjoint_and_load_as_prompt_sets(tmp_path: Path) -> None:
    paths = write_tasks(tmp_path, math_count=300, code_count=100)
    for kind in ("math", "code"):
        train = load_prompts(paths[f"{kind}_train"], kind)
        heldout = load_prompts(paths[f"{kind}_heldout"], kind)
        assert train and heldout
        assert not {p.prompt for p in train} & {p.prompt for p in heldout}
        assert not {p.id for p in train} & {p.id for p in heldout}


def test_math_solutions_box_the_answer() -> None:
    for item in math_items(200, seed=1):
        boxed = re.findall(r"\\boxed\{(-?\d+)\}", item["solution"].split("</think>")[-1])
        assert boxed == [item["answer"]]
        expression = item["prompt"].removeprefix("What is ").split("?")[0]
        assert str(eval(expression)) == item["answer"]


def test_code_solutions_pass_their_tests() -> None:
    for item in code_items(100, seed=1):
        code = item["solution"].split("```python\n")[1].split("```")[0]
        for test in item["tests"]:
            if "fn_name" in item:
                namespace: dict = {}
                exec(code, namespace)
                args = [json.loads(line) for line in test["input"].splitlines()]
                assert json.loads(test["output"]) == getattr(namespace["Solution"](), item["fn_name"])(*args)
            else:
                out = io.StringIO()
                with contextlib.redirect_stdout(out):
                    exec(code, {"input": io.StringIO(test["input"]).readline})
                assert out.getvalue() == test["output"]
