"""A recipe: one YAML file that configures a whole run, typed end to end. Its sections are the
components' own config schemas; the supervisor only fills in what it decides at start (run
directory, addresses, generator ids)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from generator.config import GeneratorSettings
from judge.config import JudgeConfig
from launch.placement import PlacementConfig
from launch.prepare import names_of_recipe
from launch.smollm2_default import Smollm2Prepare
from launch.tiny_default import TinyPrepare
from learner.config import RunConfig
from proto.config import Config, load


class Recipe(Config):
    # tiny: build the tiny default and fill in ${TINY_*}; smollm2: SmolLM2-135M-Instruct, ${SMOLLM2_*}
    prepare: Literal["none", "tiny", "smollm2"] = "none"
    tiny: TinyPrepare = TinyPrepare()
    smollm2: Smollm2Prepare = Smollm2Prepare()
    # 0: a learner-only node, whose generators run on other machines (`acerl generator`)
    generators: int = Field(default=1, ge=0, description="generator processes on this node")
    max_restarts: int = Field(default=5, ge=0, description="per component")
    ready_timeout_s: float = Field(default=600.0, gt=0, description="for each component to come up")
    placement: PlacementConfig = PlacementConfig()
    judge: JudgeConfig = JudgeConfig()
    generator: GeneratorSettings = GeneratorSettings()
    learner: RunConfig


def load_recipe(path: Path, overrides: list[str] = ()) -> Recipe:  # type: ignore[assignment]
    """The recipe at `path` with dotted overrides (`learner.optim.lr=1e-6`), ${TINY_*} and the like
    filled in."""
    return load(Recipe, path, overrides, names=names_of_recipe)
