"""The notations math-verify mislabels on its own, each rewritten before it parses, and what must
stay as it was."""

from __future__ import annotations

import time

import pytest

from judge.math_check import judge_math
from judge.math_normalize import normalize_answer

# Each was measured wrong with math-verify alone (matched what it should not, or the reverse).
FIXED = [
    ("½", "\\frac{1}{2}"),
    ("1½", "\\frac{3}{2}"),
    ("¾", "0.75"),
    ("√2", "\\sqrt{2}"),
    ("3√2", "3\\sqrt{2}"),
    ("√(x+1)", "\\sqrt{x+1}"),
    ("√12", "2\\sqrt{3}"),
    ("∛8", "2"),
    ("∞", "\\infty"),
    ("(-∞, 3]", "(-\\infty, 3]"),
    ("2·3", "6"),
    ("a⋅b", "ab"),
    ("60°", "60"),
    ("1\\,000", "1000"),
    ("10 000", "10000"),
    ("10\\ 000", "10000"),
    ("1~000~000", "1000000"),
    ("0.\\overline{3}", "\\frac{1}{3}"),
    ("0.1\\overline{6}", "\\frac{1}{6}"),
    ("0.\\overline{142857}", "\\frac{1}{7}"),
    ("1.\\overline{3}", "\\frac{4}{3}"),
    ("-0.\\bar{3}", "-\\frac{1}{3}"),
    ("0.\\dot{3}", "\\frac{1}{3}"),
    ("0.(3)", "\\frac{1}{3}"),
    ("0.\\overline{9}", "1"),
]


@pytest.mark.parametrize(("boxed", "reference"), FIXED)
def test_fixed_notations_match(boxed: str, reference: str) -> None:
    assert judge_math(f"so \\boxed{{{boxed}}}", reference).status == "correct"


@pytest.mark.parametrize(("reference", "boxed"), FIXED)
def test_the_reference_is_normalised_too(reference: str, boxed: str) -> None:
    assert judge_math(f"so \\boxed{{{boxed}}}", reference).status == "correct"


NOT_CONFUSED = [
    ("(1,2)", "12"),
    ("1, 2", "12"),
    ("1,5", "15"),
    ("(100,200)", "100200"),
    ("1 000 2", "10002"),
    ("1 000", "1"),
    ("0.33", "\\frac{1}{3}"),
    ("0.\\overline{3}", "0.3"),
    ("0.(3)", "0.3"),
    ("∞", "-\\infty"),
    ("√23", "\\sqrt{2} \\cdot 3"),
    ("⅓", "0.33"),
]


@pytest.mark.parametrize(("boxed", "reference"), NOT_CONFUSED)
def test_lookalikes_stay_apart(boxed: str, reference: str) -> None:
    assert judge_math(f"so \\boxed{{{boxed}}}", reference).status == "wrong_answer"


STILL_RIGHT = [
    ("\\frac{2}{4}", "0.5"),
    ("−5", "-5"),
    ("2π", "2\\pi"),
    ("x ≤ 3", "x \\le 3"),
    ("3×4", "12"),
    ("1,000,000", "1000000"),
    ("12,345", "12345"),
    ("1{,}000", "1000"),
    ("1,234.5", "1234.5"),
    ("1,5", "1,5"),
    ("(100,200)", "(100, 200)"),
    ("\\{1,2\\}", "\\{2,1\\}"),
    ("x^2+1", "1+x^2"),
    ("\\sqrt{8}", "2\\sqrt{2}"),
    ("60^\\circ", "60"),
]


@pytest.mark.parametrize(("boxed", "reference"), STILL_RIGHT)
def test_what_math_verify_got_right_still_matches(boxed: str, reference: str) -> None:
    assert judge_math(f"so \\boxed{{{boxed}}}", reference).status == "correct"


@pytest.mark.parametrize(
    ("text", "normal"),
    [
        ("√2", "\\sqrt{2}"),
        ("∛(x)", "\\sqrt[3]{x}"),
        ("√x", "\\sqrt x"),
        ("∞x", "\\infty x"),
        ("1\\,000\\,000", "1000000"),
        ("1\\,000,5", "1000,5"),
        ("1,000", "1,000"),  # a bare comma is math-verify's call: it may be a pair
        ("1 000 00", "1 000 00"),
        ("0.1(6)", "\\frac{1}{6}"),
        ("0." + "3" * 100 + "(3)", "0." + "3" * 100 + "(3)"),  # too long to be worth a fraction
        ("plain \\frac{1}{2}", "plain \\frac{1}{2}"),
    ],
)
def test_rules(text: str, normal: str) -> None:
    assert normalize_answer(text) == normal


@pytest.mark.parametrize(
    "hostile",
    [
        "1" * (1 << 20),
        "1" + " 000" * (1 << 18) + " 5",
        "1" + "\\,000" * (1 << 17) + "\\,5",
        "√(" * (1 << 18),
        "0." + "1" * (1 << 20) + "(3",
        "1.1(" * (1 << 18),
        "0.\\overline{" + "3" * (1 << 20) + "}",
    ],
    ids=["digits", "spaced-groups", "thin-groups", "roots", "decimal", "repeats", "long-period"],
)
def test_a_megabyte_of_hostile_input_is_quick(hostile: str) -> None:
    started = time.perf_counter()
    normalize_answer(hostile)
    assert time.perf_counter() - started < 2.0
