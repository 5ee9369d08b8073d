"""The order in which an epoch visits a prompt set (the records themselves: `proto/prompt.py`)."""

from __future__ import annotations

import random
from typing import Any


class PromptOrder:
    """Which prompt comes next: a fresh seeded shuffle per epoch, minus the removed prompts.

    The order depends only on (seed, epoch, removed), so a resumed run visits the same prompts
    in the same order as an uninterrupted one. Removals take effect from the next epoch.
    """

    def __init__(self, ids: list[str], seed: int | str) -> None:
        self.ids = list(ids)
        self.seed = seed
        self.epoch = 0
        self.position = 0
        self.removed: set[str] = set()
        self._drawn_without: set[str] = set()  # the removals this epoch's order was drawn with
        self._order = self._draw()

    def _draw(self) -> list[str]:
        self._drawn_without = set(self.removed)
        order = [i for i in self.ids if i not in self._drawn_without]
        random.Random(f"{self.seed}/{self.epoch}").shuffle(order)
        return order

    @property
    def exhausted(self) -> bool:
        """Has every prompt of this epoch been drawn?"""
        return self.position == len(self._order)

    def next(self) -> str | None:
        """The next prompt id of this epoch, or None at its end (call `new_epoch`)."""
        if self.exhausted:
            return None
        prompt_id = self._order[self.position]
        self.position += 1
        return prompt_id

    def new_epoch(self) -> bool:
        """Start the next epoch; False if every prompt has been removed."""
        self.epoch += 1
        self.position = 0
        self._order = self._draw()
        return bool(self._order)

    def remove(self, prompt_ids: set[str]) -> None:
        self.removed |= prompt_ids & set(self.ids)

    def state(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "position": self.position,
            "removed": sorted(self.removed),
            "drawn_without": sorted(self._drawn_without),
        }

    def restore(self, state: dict[str, Any]) -> None:
        self.epoch = state["epoch"]
        self.removed = set(state["drawn_without"])
        self._order = self._draw()
        self.removed = set(state["removed"])
        self.position = state["position"]
