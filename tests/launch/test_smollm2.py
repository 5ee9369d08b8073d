"""`prepare: smollm2`: the recipe's names, the tasks' splits and records, the conversion of the GGUF
wheel (slow), and a response of the real model ending at `<|im_end|>` and judged right (slow)."""

from __future__ import annotations

from pathlib import Path

import pytest
from rich.console import Console

from launch.prepare import prepare
from launch.recipe import load_recipe
from launch.smollm2_default import Smollm2Prepare, build, cache_dir, downloads_dir, model_dir
from learner.smollm2.tasks import MATH_EXAMPLE, ArithmeticLevel, arithmetic_splits, code_items
from proto.prompt import CodePrompt, MathPrompt

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "launch/recipes/smollm2-135m.yaml"


def test_the_recipe_names_the_built_model_and_tasks() -> None:
    recipe = load_recipe(RECIPE)
    assert recipe.prepare == "smollm2"
    assert recipe.learner.model.path == model_dir() / "model"
    assert recipe.learner.model.dtype == "float32"
    tasks = cache_dir(recipe.smollm2)
    assert {s.prompts for s in recipe.learner.eval.sets} >= {tasks / "math_heldout.jsonl"}
    assert all(stage.prompts.parent == tasks for stage in recipe.learner.schedule.stages)


def test_a_recipe_that_prepares_nothing_builds_nothing() -> None:
    recipe = load_recipe(RECIPE, ["prepare=none", "learner.model.path=/nonexistent"])
    assert prepare(recipe, Console(quiet=True)) == 0.0


def test_a_change_of_sizes_moves_the_tasks_but_not_the_model() -> None:
    assert cache_dir(Smollm2Prepare(math_train=100)) != cache_dir(Smollm2Prepare())
    assert model_dir() == model_dir()


def test_held_out_arithmetic_is_disjoint_from_train_even_when_problems_are_few() -> None:
    # two 1-digit terms: about 160 distinct problems, so the two seeds draw many of the same
    train, held = arithmetic_splits(60, 40, seed=0, level=ArithmeticLevel(2, 2, 1))
    assert len(train) == 60 and len(held) == 40
    assert not {t["prompt"] for t in train} & {h["prompt"] for h in held}
    for item in train + held:
        record = MathPrompt.model_validate(item)
        assert record.prompt.startswith(MATH_EXAMPLE) and record.prompt.endswith("\nAnswer:")
        expression = record.prompt.removeprefix(MATH_EXAMPLE).removeprefix("What is ").split("?")[0]
        assert str(eval(expression)) == record.answer  # digits and +/- only


def test_code_problems_are_call_based_records_with_consistent_tests() -> None:
    items = list(code_items(200, seed=0))
    assert len({i["prompt"] for i in items}) == 200
    for item in items:
        record = CodePrompt.model_validate(item)
        assert record.fn_name is not None and f"function {record.fn_name}(" in record.prompt
        assert record.tests is not None and len(record.tests) == 4


@pytest.mark.slow
def test_the_build_converts_the_wheel_and_a_second_call_costs_nothing(tmp_path: Path) -> None:
    """The real build: fetch (or reuse) the wheel, dequantise, check, write the tasks."""
    from learner.smollm2.model import check, write_model

    facts = write_model(tmp_path / "model", downloads_dir())
    assert facts["parameters"] == 134_515_008
    assert str(facts["continuation"]).startswith(" Paris")
    assert not (tmp_path / "gguf").exists()  # the unpacked GGUF file is not kept
    assert check(tmp_path / "model") == facts
    build(Smollm2Prepare(), Console(quiet=True))
    assert build(Smollm2Prepare(), Console(quiet=True)) == 0.0
    tasks = cache_dir(Smollm2Prepare())
    for name in ("math_train", "math_heldout", "gsm8k_test100", "code_train", "code_heldout", "humaneval"):
        assert (tasks / f"{name}.jsonl").stat().st_size > 0
    assert len((tasks / "gsm8k_test100.jsonl").read_text().splitlines()) == 100


@pytest.mark.slow
def test_a_response_ends_at_im_end_and_the_judge_scores_its_text() -> None:
    """The real model under vLLM with its ChatML template: greedy on a sum it gets right."""
    from generator.config import EngineConfig
    from generator.engine import Engine
    from judge.math_check import judge_math
    from proto.work import SamplingParams

    build(Smollm2Prepare(), Console(quiet=True))
    path = model_dir() / "model"
    engine = Engine(path, EngineConfig(max_model_len=512, in_process=False))
    try:
        prompt = engine.render_prompt(f"{MATH_EXAMPLE}What is 7 + 9?\nAnswer:", None, True)
        text = engine.tokenizer.decode(prompt.tolist())
        assert text.startswith("<|im_start|>system\n") and text.endswith("<|im_start|>assistant\n")
        params = engine.sampling_params(SamplingParams(n=1, max_tokens=64, temperature=0), len(prompt))
        engine.submit(prompt, params)
        finished = []
        while not finished:
            finished = engine.step()
    finally:
        engine.close()
    (sample,) = finished[0].samples or []
    assert sample.finish_reason == "stop"
    assert int(sample.token_ids[-1]) == engine.tokenizer.convert_tokens_to_ids("<|im_end|>") == 2
    assert "<|im_end|>" not in sample.text
    assert judge_math(sample.text, "16").status == "correct", sample.text
