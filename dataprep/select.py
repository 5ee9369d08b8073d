"""`acerl data select`: keep the prompts hard enough to learn from.

Pass rates (`{"id", "n", "correct"}` per prompt, from `acerl data passrate`): a prompt is kept
when correct/n <= max_correct/of (6 of 16 by default for math, the recipe's hard set; for code the
default drops only prompts every try solved). Never-solved prompts stay unless asked otherwise.

Difficulty (`meta.difficulty`, code): names are ranked on one scale shared by the sources,
    1 easy, EASY, introductory (APPS)
    2 medium, MEDIUM, interview (APPS)
    3 MEDIUM_HARD
    4 hard, HARD, competition (APPS)
    5 VERY_HARD
(case ignored); a number (the recipe's 0-8 solve level) is compared as a number. A threshold
given as a name compares ranks, one given as a number compares numbers; a prompt whose difficulty
is missing, unknown (UNKNOWN_DIFFICULTY) or of the other kind is dropped as "unknown_difficulty".
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from proto.prompt import Kind

DIFFICULTY_RANKS: dict[str, int] = {
    "easy": 1,
    "introductory": 1,
    "medium": 2,
    "interview": 2,
    "medium_hard": 3,
    "hard": 4,
    "competition": 4,
    "very_hard": 5,
}
DEFAULT_MATH_BOUND = (6, 16)


class SelectError(ValueError):
    pass


@dataclass(frozen=True)
class PassRate:
    n: int
    correct: int


@dataclass(frozen=True)
class Bound:
    """Keep prompts with correct/n <= max_correct/of; None keeps all but the always-solved."""

    max_correct: int | None = None
    of: int = 16
    drop_unsolved: bool = False

    def verdict(self, rate: PassRate) -> str | None:
        """None to keep, else the reason to drop."""
        if rate.correct == 0 and self.drop_unsolved:
            return "unsolved"
        if self.max_correct is None:
            return "too_easy" if rate.correct == rate.n else None
        # Integer cross-multiplication: 6/16 must not round when n is not 16.
        return "too_easy" if rate.correct * self.of > self.max_correct * rate.n else None


def difficulty_key(value: Any) -> tuple[str, float] | None:
    """("rank", r) for a named level, ("number", x) for a number, None when unknown."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return ("number", float(value))
    if isinstance(value, str):
        text = value.strip()
        rank = DIFFICULTY_RANKS.get(text.casefold().replace(" ", "_").replace("-", "_"))
        if rank is not None:
            return ("rank", float(rank))
        try:
            return ("number", float(text))
        except ValueError:
            return None
    return None


def parse_pass_rates(rows: list[dict[str, Any]], where: str) -> dict[str, PassRate]:
    rates: dict[str, PassRate] = {}
    for number, row in enumerate(rows, start=1):
        ident, n, correct = row.get("id"), row.get("n"), row.get("correct")
        if not isinstance(ident, str) or not isinstance(n, int) or not isinstance(correct, int):
            raise SelectError(f"{where} record {number}: needs a string id and integer n and correct")
        if n <= 0 or not 0 <= correct <= n:
            raise SelectError(f"{where} record {number} ({ident!r}): needs 0 <= correct <= n and n > 0")
        rates[ident] = PassRate(n, correct)
    return rates


def select(
    records: list[dict[str, Any]],
    kind: Kind,
    rates: dict[str, PassRate] | None,
    bound: Bound,
    max_difficulty: str | None = None,
) -> tuple[list[dict[str, Any]], Counter[str]]:
    """The records kept (in order) and the counts of dropped ones by reason."""
    if kind == "math" and rates is None:
        raise SelectError("math selection needs --passrate")
    if rates is None and max_difficulty is None:
        raise SelectError("code selection needs --passrate, --max-difficulty, or both")
    threshold = difficulty_key(max_difficulty) if max_difficulty is not None else None
    if max_difficulty is not None and threshold is None:
        raise SelectError(f"--max-difficulty {max_difficulty!r}: not a known level or a number")
    kept: list[dict[str, Any]] = []
    dropped: Counter[str] = Counter()
    for record in records:
        reason = None
        if threshold is not None:
            level = difficulty_key((record.get("meta") or {}).get("difficulty"))
            if level is None or level[0] != threshold[0]:
                reason = "unknown_difficulty"
            elif level[1] > threshold[1]:
                reason = "too_hard"
        if reason is None and rates is not None:
            rate = rates.get(record["id"])
            if rate is None:
                raise SelectError(f"prompt {record['id']!r} has no pass rate")
            reason = bound.verdict(rate)
        if reason is None:
            kept.append(record)
        else:
            dropped[reason] += 1
    return kept, dropped
