"""`prepare:` in a recipe: what is built before a run (a model, prompt sets) and the ${...} names
the recipe uses for it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rich.console import Console

from launch import smollm2_default, tiny_default

if TYPE_CHECKING:
    from launch.recipe import Recipe


def prepare(recipe: Recipe, console: Console) -> float:
    """Build what the recipe's `prepare` names, unless cached; the seconds it took."""
    if recipe.prepare == "tiny":
        return tiny_default.build(recipe.tiny, console)
    if recipe.prepare == "smollm2":
        return smollm2_default.build(recipe.smollm2, console)
    return 0.0


def names_of_recipe(data: dict[str, Any]) -> dict[str, str]:
    """The ${...} names of a recipe that is still raw data, by its `prepare`."""
    if data.get("prepare") == "tiny":
        return tiny_default.names_of_recipe(data)
    if data.get("prepare") == "smollm2":
        return smollm2_default.names_of_recipe(data)
    return {}
