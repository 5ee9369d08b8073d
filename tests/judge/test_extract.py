"""Finding the final answer and the final program in a response."""

from __future__ import annotations

import time

from judge.extract import final_text, last_boxed, last_python_block


def test_final_text_is_after_the_last_think_close() -> None:
    assert final_text("<think>a</think>b</think>c") == "c"
    assert final_text("no thinking at all") == "no thinking at all"
    assert final_text("plan ... </think> answer") == " answer"  # template opened <think> itself


def test_unclosed_thinking_has_no_final_text() -> None:
    assert final_text("<think>still thinking \\boxed{3}") is None


def test_last_boxed_takes_the_box_that_closes_last() -> None:
    assert last_boxed("\\boxed{1} then \\boxed{\\frac{1}{2}}") == "\\frac{1}{2}"
    assert last_boxed("\\boxed{x = \\boxed{5}}") == "x = \\boxed{5}"  # nested: the outer box
    assert last_boxed("\\fbox{7} and text") == "7"
    assert last_boxed("\\boxed {3}") == "3"


def test_last_boxed_matches_nested_and_escaped_braces() -> None:
    assert last_boxed("\\boxed{\\{1, 2\\}}") == "\\{1, 2\\}"
    assert last_boxed("\\boxed{\\frac{a^{2}}{b_{1}}}") == "\\frac{a^{2}}{b_{1}}"
    assert last_boxed("\\boxed{(0,1]} \\\\boxed{2}") == "2"  # `\\` is a line break, then a box


def test_incomplete_boxes_are_not_answers() -> None:
    assert last_boxed("\\boxed{3") is None
    assert last_boxed("\\boxed{1} and \\boxed{2") == "1"
    assert last_boxed("boxed{3}") is None
    assert last_boxed("") is None


def test_a_megabyte_of_braces_takes_linear_time() -> None:
    hostile = [
        "\\boxed{" * 150_000,  # a million characters of boxes that never close
        "{" * 500_000 + "}" * 500_000,
        "\\boxed{" + "{" * 500_000 + "}" * 500_000 + "}",
        "}" * 1_000_000 + "\\boxed{1}",
        "\\boxed" + " " * 1_000_000,
    ]
    start = time.perf_counter()
    results = [last_boxed(text) for text in hostile]
    elapsed = time.perf_counter() - start
    assert results[0] is None and results[1] is None and results[3] == "1" and results[4] is None
    assert results[2] is not None and len(results[2]) == 1_000_000
    assert elapsed < 10, f"{elapsed:.1f} s for five megabytes: not linear"


def test_last_python_block() -> None:
    text = "```python\nprint(1)\n```\nthen\n```python\nprint(2)\n```\n```python\nprint(3)"
    assert last_python_block(text) == "print(2)\n"  # the unterminated third block does not count
    assert last_python_block("```py\na = 1\n```") == "a = 1\n"
    assert last_python_block("```Python3\nb = 2\n```") == "b = 2\n"
    assert last_python_block("```\nplain\n```\n```cpp\nint x;\n```") is None
    assert (
        last_python_block("````python\n```\nnot a fence inside\n```\n````")
        == "```\nnot a fence inside\n```\n"
    )
    assert last_python_block("no code") is None


def test_a_megabyte_of_fences_takes_linear_time() -> None:
    start = time.perf_counter()
    assert last_python_block("`" * 1_000_000) is None
    assert last_python_block("```python\n" * 100_000) is None
    assert time.perf_counter() - start < 10
