"""Math verdicts: the last box of the final text, compared with the reference by math-verify.

This runs inside a judge worker process, never in the daemon's loop: math-verify (sympy) can run
for minutes or exhaust memory on hostile input, and the pool enforces the deadline by killing the
worker. math-verify's own signal-based timeouts are therefore switched off here.
"""

from __future__ import annotations

import logging

from math_verify import parse, verify

from judge.extract import final_text, last_boxed, unclosed_think
from judge.math_normalize import normalize_answer
from judge.outcome import Outcome

# math-verify warns once that its timeouts are off: the worker pool enforces deadlines instead.
logging.getLogger("math_verify").setLevel(logging.ERROR)

MAX_SHOWN = 200


def _shown(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_SHOWN else text[:MAX_SHOWN] + "..."


def _as_box(latex: str) -> str:
    return latex if "\\boxed" in latex else "\\boxed{" + latex + "}"


def judge_math(response: str, answer: str, opened_think: bool = False) -> Outcome:
    """Decide one math response against its reference answer (`opened_think`: see `final_text`)."""
    gold = parse(_as_box(normalize_answer(answer)), parsing_timeout=None)  # type: ignore[arg-type]
    if not gold:
        return Outcome("bad_request", f"answer: math-verify cannot read the reference {_shown(answer)!r}")
    text = final_text(response, opened_think)
    if text is None:
        return Outcome("no_answer", unclosed_think(opened_think))
    boxed = last_boxed(text)
    if boxed is None:
        where = "after the last </think>" if "</think>" in response else "in the response"
        return Outcome("no_answer", f"no \\boxed{{...}} {where}")
    if not boxed.strip():
        return Outcome("no_answer", "the last \\boxed{} is empty")
    predicted = parse("\\boxed{" + normalize_answer(boxed) + "}", parsing_timeout=None)  # type: ignore[arg-type]
    if verify(gold, predicted, timeout_seconds=None):
        return Outcome("correct", f"{_shown(boxed)!r} matches {_shown(answer)!r}")
    return Outcome("wrong_answer", f"answered {_shown(boxed)!r}, expected {_shown(answer)!r}")
