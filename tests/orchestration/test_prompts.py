"""Prompt sets: every supported file format loads; a bad record is named with its place and field."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest

from learner.orchestration.prompts import PromptOrder
from proto.prompt import CodePrompt, MathPrompt, PromptSetError, load_prompts

MATH = [
    {"id": "a", "prompt": "1+1?", "answer": "2"},
    {"id": "b", "prompt": "2+2?", "answer": "4", "level": 3},
]
CODE = [
    {"id": "c", "prompt": "echo", "tests": [{"input": "1\n", "output": "1\n"}]},
    {
        "id": "d",
        "prompt": "add",
        "tests": [{"input": "1\n2", "output": "3"}],
        "fn_name": "add",
        "time_limit_s": 2,
    },
]


def uniform(records: list[dict]) -> list[dict]:
    """Arrow tables have one schema: absent optional fields become nulls, as in real data sets."""
    keys = {key for record in records for key in record}
    return [{key: record.get(key) for key in sorted(keys)} for record in records]


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    return path


@pytest.mark.parametrize("fmt", ["jsonl", "json", "parquet", "dataset_dir"])
def test_formats(tmp_path: Path, fmt: str) -> None:
    paths = {}
    for kind, records in (("math", MATH), ("code", CODE)):
        if fmt == "jsonl":
            paths[kind] = write_jsonl(tmp_path / f"{kind}.jsonl", records)
        elif fmt == "json":
            paths[kind] = tmp_path / f"{kind}.json"
            paths[kind].write_text(json.dumps(records))
        elif fmt == "parquet":
            paths[kind] = tmp_path / f"{kind}.parquet"
            datasets.Dataset.from_list(uniform(records)).to_parquet(str(paths[kind]))
        else:
            paths[kind] = tmp_path / kind
            datasets.Dataset.from_list(uniform(records)).save_to_disk(str(paths[kind]))
    math = load_prompts(paths["math"], "math")
    code = load_prompts(paths["code"], "code")
    assert [type(p) for p in math] == [MathPrompt, MathPrompt] and [p.answer for p in math] == ["2", "4"]
    assert [type(p) for p in code] == [CodePrompt, CodePrompt]
    assert code[1].fn_name == "add" and code[1].time_limit_s == 2 and code[1].tests[0].output == "3"


@pytest.mark.parametrize(
    ("records", "kind", "words"),
    [
        (
            [MATH[0], {"id": "x", "prompt": "p"}],
            "math",
            ":2: math record 'x': field 'answer': Field required",
        ),
        ([{"id": "y", "prompt": "p", "tests": []}], "code", ":1: code record 'y': field 'tests'"),
        ([{"id": "z", "prompt": "p", "tests": [{"input": "1"}]}], "code", "field 'tests.0.output'"),
        ([MATH[0], MATH[0]], "math", ":2: id 'a' already used at"),
        ([["not", "an", "object"]], "math", ":1: expected an object, got list"),
    ],
)
def test_bad_records_are_named(tmp_path: Path, records: list, kind: str, words: str) -> None:
    path = write_jsonl(tmp_path / "set.jsonl", records)
    with pytest.raises(PromptSetError) as err:
        load_prompts(path, kind)
    assert words in str(err.value) and str(path) in str(err.value)


def test_unreadable_sets(tmp_path: Path) -> None:
    (tmp_path / "broken.jsonl").write_text('{"id": "a", "prompt": "p", "answer": "1"}\n{"id": \n')
    with pytest.raises(PromptSetError, match=r"broken.jsonl:2: not valid JSON"):
        load_prompts(tmp_path / "broken.jsonl", "math")
    with pytest.raises(PromptSetError, match="does not exist"):
        load_prompts(tmp_path / "missing.jsonl", "math")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(PromptSetError, match="holds no records"):
        load_prompts(tmp_path / "empty.jsonl", "math")


def test_order_is_a_seeded_shuffle_per_epoch_and_resumes() -> None:
    ids = [f"p{i}" for i in range(10)]
    order = PromptOrder(ids, seed=3)
    epoch0 = [order.next() for _ in range(10)]
    assert sorted(epoch0) == sorted(ids) and epoch0 != ids and order.next() is None
    order.remove({"p1", "p2"})
    assert order.new_epoch()
    first_half = [order.next() for _ in range(4)]
    saved = order.state()
    second_half = [order.next() for _ in range(4)]
    assert sorted(first_half + second_half) == sorted(set(ids) - {"p1", "p2"})
    again = PromptOrder(ids, seed=3)
    again.restore(saved)
    assert [again.next() for _ in range(4)] == second_half and again.next() is None
    assert [PromptOrder(ids, seed=3).next() for _ in range(1)] == epoch0[:1]
