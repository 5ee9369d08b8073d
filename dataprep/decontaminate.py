"""`acerl data decontaminate`: drop training problems that share a word n-gram with an evaluation
problem (the recipe: 9-grams for math, 14-grams for code), on template-free normalised words."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dataprep.text import ngrams, words
from proto.prompt import Kind

DEFAULT_N: dict[Kind, int] = {"math": 9, "code": 14}


@dataclass(frozen=True)
class Overlap:
    id: str
    eval_file: str
    eval_id: str
    ngram: str

    def report(self) -> dict[str, str]:
        return {"id": self.id, "eval_file": self.eval_file, "eval_id": self.eval_id, "ngram": self.ngram}


class EvalIndex:
    """Every n-gram of the evaluation problems, and the first (file, id) it came from."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.owners: dict[tuple[str, ...], tuple[str, str]] = {}

    def add(self, file: str, records: list[dict[str, Any]]) -> None:
        for record in records:
            for gram in ngrams(words(record["prompt"]), self.n):
                self.owners.setdefault(gram, (file, record["id"]))

    def overlap(self, record: dict[str, Any]) -> Overlap | None:
        for gram in ngrams(words(record["prompt"]), self.n):
            owner = self.owners.get(gram)
            if owner is not None:
                return Overlap(record["id"], owner[0], owner[1], " ".join(gram))
        return None


def decontaminate(
    records: list[dict[str, Any]], index: EvalIndex
) -> tuple[list[dict[str, Any]], list[Overlap]]:
    """The records kept (in order) and one overlap per dropped record."""
    kept: list[dict[str, Any]] = []
    removed: list[Overlap] = []
    for record in records:
        found = index.overlap(record)
        if found is None:
            kept.append(record)
        else:
            removed.append(found)
    return kept, removed
