"""Prompts rendered with DeepSeek-R1-Distill's chat template open `<think>`: the generator says so
on the judge request, and the judge then scores only what follows `</think>`."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from generator.engine import Engine, Sample
from generator.rollout import judge_request
from generator.thinking import opens_think
from judge.dispatch import answer
from judge.worker import judge
from proto.work import SamplingParams, WorkItem
from tests.chat_template import TEMPLATE_PATH, distill_tokenizer


def engine_of(chat_template: str | None = None) -> Engine:
    """The engine's prompt methods over a local tokenizer, without starting vLLM."""
    tokenizer = distill_tokenizer(chat_template)
    vocab = SimpleNamespace(get_vocab_size=lambda: len(tokenizer))
    llm = SimpleNamespace(llm_engine=SimpleNamespace(model_config=vocab))
    engine = Engine.__new__(Engine)
    engine.tokenizer = tokenizer
    engine.llm = llm
    return engine


def item(answer: str = "5") -> WorkItem:
    return WorkItem(
        id="s0/e0/p0",
        kind="math",
        stage=1,
        policy_version=0,
        prompt="What is 2 + 3?",
        sampling=SamplingParams(n=1, max_tokens=64, temperature=0.6),
        lease_s=10,
        answer=answer,
    )


def sample(text: str, finish: str = "stop") -> Sample:
    return Sample(
        token_ids=np.arange(3, dtype=np.int32),
        logprobs=np.zeros(3, dtype=np.float32),
        finish_reason=finish,  # type: ignore[arg-type]
        text=text,
        versions=frozenset({"0"}),
    )


def test_the_distill_template_ends_the_prompt_inside_think() -> None:
    engine = engine_of()
    text = engine.tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 2 + 3?"}], tokenize=False, add_generation_prompt=True
    )
    assert text.endswith("<｜Assistant｜><think>\n")
    ids = engine.render_prompt("What is 2 + 3?", None, True)
    assert engine.opens_think(ids)
    assert engine.opens_think(engine.render_prompt(None, ids, True))  # already rendered ids too


def test_prompts_that_do_not_open_think_are_not_flagged() -> None:
    closed = TEMPLATE_PATH.read_text(encoding="utf-8").replace("<think>\\n", "")
    engine = engine_of(closed)
    assert not engine.opens_think(engine.render_prompt("What is 2 + 3?", None, True))
    assert not engine_of().opens_think(engine_of().render_prompt("Say <think> now", None, False))


def test_whitespace_after_think_is_looked_past() -> None:
    engine = engine_of()
    ids = engine.render_prompt("q", None, True)
    padded = np.concatenate([ids, engine.render_prompt("\n" * 40, None, False)])
    assert engine.opens_think(padded)


@pytest.mark.parametrize(
    ("text", "opened"),
    [
        ("x<think>\n", True),
        ("x<think> \t\n\n", True),
        ("x</think>\n", False),
        ("<think>x", False),
        ("", False),
    ],
)
def test_opens_think(text: str, opened: bool) -> None:
    assert opens_think(text) is opened


def verdict_of(response: str, finish: str = "stop", answer_text: str = "5"):  # type: ignore[no-untyped-def]
    """The verdict the judge's worker gives a completion of the distill-templated prompt."""
    engine = engine_of()
    opened = engine.opens_think(engine.render_prompt("What is 2 + 3?", None, True))
    request = judge_request(item(answer_text), "w/0", sample(response, finish), opened)
    return answer(request, judge(request, None))  # type: ignore[arg-type]  # math needs no sandbox


def test_a_box_inside_unfinished_reasoning_is_no_answer() -> None:
    verdict = verdict_of("Let me think. 2 + 3 = 5, so \\boxed{5}")
    assert (verdict.status, verdict.reward) == ("no_answer", 0)
    assert "prompt opened <think>" in verdict.detail


def test_only_the_box_after_think_counts() -> None:
    response = "reasoning \\boxed{4} </think> The answer is \\boxed{5}"
    assert verdict_of(response).status == "correct"
    assert verdict_of(response, answer_text="4").status == "wrong_answer"


def test_a_truncated_response_is_flagged_on_its_verdict() -> None:
    cut = verdict_of("2 + 3 is, let me see", finish="length")
    assert (cut.status, cut.truncated) == ("no_answer", True)
    finished = verdict_of("ok </think> \\boxed{5}")
    assert (finished.status, finished.truncated) == ("correct", False)
