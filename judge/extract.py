"""Finding the answer in a response: the final text after the thinking, its last box, its last program.

Every function here runs in time linear in the response: a response is written by the policy being
trained, and a megabyte of braces or fences must not stall the judge.
"""

from __future__ import annotations

import re

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"

_BOX = re.compile(r"\\(?:boxed|fbox)\s*\{")
# Braces, and escaped characters (`\{` is a literal brace, not a group), consumed in pairs.
_STRUCTURE = re.compile(r"\\.|[{}]", re.DOTALL)
# An opening fence at the start of a line whose info string names Python, and any closing fence.
_FENCE = re.compile(r"^[ \t]*(`{3,}|~{3,})[ \t]*([^\n`]*)$", re.MULTILINE)
_PYTHON_INFO = frozenset({"python", "python3", "py"})


def final_text(response: str, opened_think: bool = False) -> str | None:
    """The text after the last `</think>`; the whole response if it never thinks; None while thinking.

    A response that opens `<think>` and never closes it was cut off (or gave up) inside its
    reasoning: nothing in it counts as a final answer. With `opened_think` the prompt itself
    ended with `<think>` (DeepSeek-R1-Distill's template does), so the response starts inside the
    reasoning and only a `</think>` ends it.
    """
    close = response.rfind(THINK_CLOSE)
    if close >= 0:
        return response[close + len(THINK_CLOSE) :]
    if opened_think or THINK_OPEN in response:
        return None
    return response


def unclosed_think(opened_think: bool) -> str:
    """Why a response that never left its reasoning gave no answer (a verdict's detail)."""
    if opened_think:
        return "the prompt opened <think> and the response never closes it"
    return "the response never closes its <think> block"


def last_boxed(text: str) -> str | None:
    r"""The content of the last complete `\boxed{...}` or `\fbox{...}`, braces matched; None if none.

    "Last" is the box that closes last, so of nested boxes the outer one wins. `\{` and `\}` are
    literal braces and do not open or close groups.
    """
    # One pass pairs every brace with its partner, so each candidate box is checked in O(1).
    match_of: dict[int, int] = {}
    stack: list[int] = []
    for token in _STRUCTURE.finditer(text):
        ch = token.group()
        if ch == "{":
            stack.append(token.start())
        elif ch == "}" and stack:
            match_of[stack.pop()] = token.start()
    best_end = -1
    best: str | None = None
    for box in _BOX.finditer(text):
        open_at = box.end() - 1
        close_at = match_of.get(open_at)
        if close_at is not None and close_at > best_end:
            best_end = close_at
            best = text[open_at + 1 : close_at]
    return best


def last_python_block(text: str) -> str | None:
    """The body of the last complete fenced block whose info string is python/python3/py."""
    last: str | None = None
    open_fence: str | None = None
    open_is_python = False
    body_start = 0
    for fence in _FENCE.finditer(text):
        marker, info = fence.group(1), fence.group(2).strip()
        if open_fence is None:
            open_fence = marker
            open_is_python = info.split(maxsplit=1)[0].lower() in _PYTHON_INFO if info else False
            body_start = fence.end() + 1
        elif not info and marker[0] == open_fence[0] and len(marker) >= len(open_fence):
            if open_is_python:
                last = text[body_start : fence.start()]
            open_fence = None
    return last
