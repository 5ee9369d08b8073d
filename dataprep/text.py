"""Text normalisation shared by dedup and decontamination."""

from __future__ import annotations

import re
import unicodedata

from dataprep.templates import strip_template

_SPACE = re.compile(r"\s+")
# A word is a run of letters and digits; every other visible character is a token of its own.
_TOKEN = re.compile(r"\w+|[^\w\s]")


def normalised(prompt: str) -> str:
    """The problem text of `prompt`: template removed, NFKC, casefolded, whitespace collapsed."""
    text = unicodedata.normalize("NFKC", strip_template(prompt)).casefold()
    return _SPACE.sub(" ", text).strip()


def words(prompt: str) -> list[str]:
    """The tokens of the normalised problem text, punctuation split off."""
    return _TOKEN.findall(normalised(prompt))


def ngrams(tokens: list[str], n: int) -> list[tuple[str, ...]]:
    """Every run of `n` consecutive tokens (none when there are fewer than `n`)."""
    return [tuple(tokens[start : start + n]) for start in range(len(tokens) - n + 1)]
