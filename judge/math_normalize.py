r"""Rewriting answers into the LaTeX math-verify reads, for notations it mislabels.

Applied to the boxed answer and to the reference alike, before math-verify parses them. Each rule
fixes a case measured to go wrong without it:

- unicode symbols: `½` (and the other vulgar fractions), `√2`, `∛x`, `∞`, `·`, `°`;
- digit groups: `1\,000`, `10 000`, `10\ 000`;
- repeating decimals: `0.\overline{3}`, `0.1\bar{6}`, `0.\dot{3}`, `0.(3)`.

Every rule runs in time linear in its input: a response is written by the policy being trained,
and a megabyte of digits or roots must not stall the worker.
"""

from __future__ import annotations

import math
import re

_VULGAR = {
    "½": (1, 2),
    "⅓": (1, 3),
    "⅔": (2, 3),
    "¼": (1, 4),
    "¾": (3, 4),
    "⅕": (1, 5),
    "⅖": (2, 5),
    "⅗": (3, 5),
    "⅘": (4, 5),
    "⅙": (1, 6),
    "⅚": (5, 6),
    "⅐": (1, 7),
    "⅛": (1, 8),
    "⅜": (3, 8),
    "⅝": (5, 8),
    "⅞": (7, 8),
    "⅑": (1, 9),
    "⅒": (1, 10),
}
# Spaces after command names keep them apart from a following letter (`∞x` is not `\inftyx`).
# A vulgar fraction after a digit reads as a mixed number, `1½`, which math-verify takes as 1 + 1/2.
_SYMBOLS = str.maketrans(
    {
        "∞": r"\infty ",
        "·": r"\cdot ",
        "⋅": r"\cdot ",
        "°": r"^{\circ}",
        **{char: rf"\frac{{{top}}}{{{bottom}}}" for char, (top, bottom) in _VULGAR.items()},
    }
)

_ROOT_COMMAND = {"√": r"\sqrt", "∛": r"\sqrt[3]", "∜": r"\sqrt[4]"}
# The radicand: a parenthesised group without nested parentheses (so each attempt stops at the next
# parenthesis: linear), or a run of digits; anything else is left as the command's argument.
_ROOT = re.compile(r"([√∛∜])[ \t]*(?:\(([^()]*)\)|(\d+(?:\.\d+)?))?")

# A number written in groups of three digits, one kind of separator per number: LaTeX's spaces
# (`\,` and the like), `{,}`, `~` and a plain space. A bare comma is left to math-verify, which
# reads `1,000,000` already, because `(100,200)` is a pair, not 100200. The look-behinds refuse
# to start inside a number or a group (so no start rescans a chain: linear); the look-aheads
# refuse a chain followed by a shorter group, as in `1 000 2`, more likely a list than a number.
_SEPARATOR = r"(?:\{,\}|\\[,;:! ]|~| )"
_GROUPED = re.compile(
    r"(?<![\d.])(?<!\d[, ~])(?<!\d\\[,;:! ])(?<!\d\{,\})"
    rf"(\d{{1,3}})(?P<sep>{_SEPARATOR})\d{{3}}(?:(?P=sep)\d{{3}})*(?!\d)(?!(?P=sep)\d)"
)
_SEPARATOR_ONLY = re.compile(_SEPARATOR)

# Integer part, fixed digits, repeating digits: `I.F\overline{R}` (also \bar, \dot) or `I.F(R)`.
_REPEATING = re.compile(r"(?<![\d.])(\d+)\.(\d*)(?:\\(?:overline|bar|dot)[ \t]*\{(\d+)\}|\((\d+)\))(?!\d)")
MAX_REPEATING_DIGITS = 60  # beyond this the exact fraction is not worth big-integer arithmetic


def _root(match: re.Match[str]) -> str:
    command = _ROOT_COMMAND[match.group(1)]
    radicand = match.group(2) if match.group(2) is not None else match.group(3)
    if radicand is None:
        return command + " "
    return command + "{" + radicand + "}"


def _ungrouped(match: re.Match[str]) -> str:
    return _SEPARATOR_ONLY.sub("", match.group())


def _repeating(match: re.Match[str]) -> str:
    whole, fixed = match.group(1), match.group(2)
    period = match.group(3) if match.group(3) is not None else match.group(4)
    if len(whole) + len(fixed) + len(period) > MAX_REPEATING_DIGITS:
        return match.group()
    # I.F(R) = I + (FR - F) / (10^|F| (10^|R| - 1))
    denominator = 10 ** len(fixed) * (10 ** len(period) - 1)
    numerator = int(whole) * denominator + int(fixed + period) - int(fixed or "0")
    divisor = math.gcd(numerator, denominator)
    numerator, denominator = numerator // divisor, denominator // divisor
    if denominator == 1:
        return str(numerator)
    return rf"\frac{{{numerator}}}{{{denominator}}}"


def normalize_answer(latex: str) -> str:
    """`latex` with the notations above rewritten; anything else is left as it was."""
    latex = latex.translate(_SYMBOLS)
    latex = _ROOT.sub(_root, latex)
    latex = _GROUPED.sub(_ungrouped, latex)
    return _REPEATING.sub(_repeating, latex)
