"""Math verdicts: extraction rules and math-verify equivalence, judged in this process."""

from __future__ import annotations

import pytest

from judge.math_check import judge_math

EQUIVALENT = [
    # (what the response boxes, the reference answer)
    ("\\frac{1}{2}", "0.5"),
    ("\\dfrac{3}{4}", "\\frac34"),
    ("1/2", "\\frac{1}{2}"),
    ("2\\sqrt{2}", "\\sqrt{8}"),
    ("\\sqrt{12}", "2\\sqrt{3}"),
    ("(0, 1]", "(0,1]"),
    ("\\left(1,2\\right)", "(1,2)"),
    ("\\{2, 1\\}", "\\{1,2\\}"),
    ("50\\%", "50"),
    ("50", "50\\%"),
    ("5 \\text{ cm}", "5"),
    ("12^\\circ", "12"),
    ("\\text{(B)}", "B"),
    ("\\text{5}", "5"),
    ("1,000", "1000"),
    ("x^2+1", "1+x^2"),
    ("x = 2", "2"),
    ("10.0", "10"),
    ("-\\frac{7}{3}", "-7/3"),
]

DIFFERENT = [
    ("4", "3"),
    ("[0, 1]", "(0,1]"),
    ("\\{1, 3\\}", "\\{1,2\\}"),
    ("2\\sqrt{3}", "\\sqrt{8}"),
    ("\\frac{1}{3}", "0.5"),
    ("\\text{two}", "2"),
]


@pytest.mark.parametrize(("boxed", "answer"), EQUIVALENT)
def test_equivalent_answers_are_correct(boxed: str, answer: str) -> None:
    outcome = judge_math(f"<think>work</think>The answer is $\\boxed{{{boxed}}}$.", answer)
    assert outcome.status == "correct", outcome.detail


@pytest.mark.parametrize(("boxed", "answer"), DIFFERENT)
def test_different_answers_are_wrong(boxed: str, answer: str) -> None:
    outcome = judge_math(f"<think>work</think>\\boxed{{{boxed}}}", answer)
    assert outcome.status == "wrong_answer", outcome.detail
    assert "expected" in outcome.detail


def test_the_last_of_several_boxes_counts() -> None:
    assert judge_math("first \\boxed{3}, finally \\boxed{4}", "4").status == "correct"
    assert judge_math("first \\boxed{4}, finally \\boxed{3}", "4").status == "wrong_answer"


def test_a_box_only_inside_the_thinking_is_no_answer() -> None:
    outcome = judge_math("<think>it is \\boxed{4}</think>So the answer is four.", "4")
    assert outcome.status == "no_answer"
    assert "</think>" in outcome.detail


def test_thinking_that_never_closes_is_no_answer() -> None:
    assert judge_math("<think>maybe \\boxed{4}", "4").status == "no_answer"


def test_without_thinking_the_whole_response_counts() -> None:
    assert judge_math("so \\boxed{4}", "4").status == "correct"


def test_no_box_empty_box_and_unclosed_box_are_no_answer() -> None:
    assert judge_math("<think>x</think>the answer is 4", "4").status == "no_answer"
    assert judge_math("\\boxed{}", "4").status == "no_answer"
    assert judge_math("\\boxed{4", "4").status == "no_answer"


def test_fbox_counts_like_boxed() -> None:
    assert judge_math("\\fbox{\\frac{1}{2}}", "0.5").status == "correct"


def test_an_unreadable_reference_is_a_bad_request() -> None:
    outcome = judge_math("\\boxed{4}", "")
    assert outcome.status == "bad_request"
    assert outcome.detail.startswith("answer:")


def test_a_megabyte_of_unmatched_braces_is_no_answer_quickly() -> None:
    response = "{" * 1_000_000 + "\\boxed{5"
    assert judge_math(response, "5").status == "no_answer"
