"""`prepare: smollm2`: SmolLM2-135M-Instruct converted from the package registry's GGUF wheel, and
its prompt sets, built once and cached under .cache/. The model is keyed by its builder's source
only (a change to the tasks does not convert it again); the tasks by their sizes and builder."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

from pydantic import Field
from rich.console import Console

from proto.config import Config, ConfigError

ROOT = Path(__file__).resolve().parent.parent
MODEL_BUILDER = ROOT / "learner" / "smollm2" / "model.py"
TASKS_BUILDER = ROOT / "learner" / "smollm2" / "tasks.py"


class Smollm2Prepare(Config):
    """Sizes of the prompt sets built beside SmolLM2-135M-Instruct."""

    seed: int = 0
    math_train: int = Field(default=2000, ge=10)
    math_heldout: int = Field(default=200, ge=10)
    # reasoning-gym chain_sum: two terms of 1-2 digits, which the model gets right 14/32 greedy
    # (see learner/smollm2/tasks.py for the levels measured)
    min_terms: int = Field(default=2, ge=2)
    max_terms: int = Field(default=2, ge=2)
    max_digits: int = Field(default=2, ge=1)
    code_prompts: int = Field(default=600, ge=10)


def _key(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def model_dir() -> Path:
    return ROOT / ".cache" / f"smollm2-model-{_key(MODEL_BUILDER.read_text())}"


def cache_dir(smollm2: Smollm2Prepare) -> Path:
    """Where the prompt sets go (the model has its own key: `model_dir`)."""
    key = json.dumps(smollm2.model_dump(), sort_keys=True) + TASKS_BUILDER.read_text()
    return ROOT / ".cache" / f"smollm2-tasks-{_key(key)}"


def downloads_dir() -> Path:
    """The wheels fetched with pip, kept across rebuilds (the model's is 93 MB)."""
    return ROOT / ".cache" / "smollm2-downloads"


def names(smollm2: Smollm2Prepare) -> dict[str, str]:
    """The ${...} names a recipe uses for what `build` makes."""
    return {"SMOLLM2_MODEL": str(model_dir() / "model"), "SMOLLM2_TASKS": str(cache_dir(smollm2))}


def names_of_recipe(data: dict[str, Any]) -> dict[str, str]:
    """`names` for a recipe that is still raw data (its ${...} are filled in before validation)."""
    try:
        return names(Smollm2Prepare.model_validate(data.get("smollm2") or {}))
    except ValueError as exc:
        raise ConfigError(f"smollm2: {exc}") from None


def build(smollm2: Smollm2Prepare, console: Console) -> float:
    """Build what is not cached yet; returns the seconds it took (0 when cached)."""
    model, tasks = model_dir() / "model", cache_dir(smollm2)
    done = tasks / "done"
    if (model / "config.json").exists() and done.exists():
        return 0.0
    from learner.smollm2.model import ConversionError, write_model
    from learner.smollm2.tasks import ArithmeticLevel, write_tasks

    started = time.perf_counter()
    if not (model / "config.json").exists():
        console.print(f"[bold]SmolLM2-135M-Instruct[/]: fetching and converting into {model}")
        try:
            facts = write_model(model, downloads_dir())
        except ConversionError as exc:
            raise ConfigError(str(exc)) from None
        console.print(f"model checked: {facts}")
    if not done.exists():
        console.print(f"[bold]SmolLM2 tasks[/]: writing {tasks}")
        level = ArithmeticLevel(smollm2.min_terms, smollm2.max_terms, smollm2.max_digits)
        try:
            written = write_tasks(
                tasks,
                downloads_dir(),
                seed=smollm2.seed,
                math_train=smollm2.math_train,
                math_heldout=smollm2.math_heldout,
                level=level,
                code_count=smollm2.code_prompts,
            )
        except (RuntimeError, ValueError) as exc:
            raise ConfigError(f"smollm2 tasks: {exc}") from None
        done.write_text(json.dumps({name: str(path) for name, path in written.items()}, indent=1) + "\n")
    seconds = time.perf_counter() - started
    console.print(f"SmolLM2 ready in {seconds:.0f} s")
    return seconds
