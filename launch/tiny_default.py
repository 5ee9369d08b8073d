"""`prepare: tiny`: the tiny default's model, tasks and warm start, built once and cached under
.cache/ by a key of their sizes and of the builders' source (a change to either rebuilds)."""

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
BUILDERS = [ROOT / "learner" / "tiny" / f"{name}.py" for name in ("model", "tasks", "warm_start")]


class TinyPrepare(Config):
    """Sizes of the tiny default."""

    seed: int = 0
    hidden: int = 128
    layers: int = 2
    math_prompts: int = Field(default=2000, ge=10)
    code_prompts: int = Field(default=600, ge=10)
    careful_fraction: float = Field(default=0.3, ge=0, le=1)  # worked solutions in the warm start
    warm_start_steps: int = Field(default=300, ge=0)
    warm_start_lr: float = Field(default=3e-3, gt=0)


def cache_dir(tiny: TinyPrepare) -> Path:
    key = json.dumps(tiny.model_dump(), sort_keys=True) + "".join(p.read_text() for p in BUILDERS)
    return ROOT / ".cache" / f"tiny-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def names(tiny: TinyPrepare) -> dict[str, str]:
    """The ${...} names a recipe uses for what `build` makes."""
    cache = cache_dir(tiny)
    return {"TINY_MODEL": str(cache / "warm_start"), "TINY_TASKS": str(cache / "tasks")}


def names_of_recipe(data: dict[str, Any]) -> dict[str, str]:
    """`names` for a recipe that is still raw data (its ${...} are filled in before validation)."""
    if data.get("prepare") != "tiny":
        return {}
    try:
        return names(TinyPrepare.model_validate(data.get("tiny") or {}))
    except ValueError as exc:
        raise ConfigError(f"tiny: {exc}") from None


def build(tiny: TinyPrepare, console: Console) -> float:
    """Build what is not cached yet; returns the seconds it took (0 when cached)."""
    cache = cache_dir(tiny)
    base, tasks, warm = cache / "model", cache / "tasks", cache / "warm_start"
    if (warm / "config.json").exists():
        return 0.0
    from learner.tiny.model import write_tiny_model
    from learner.tiny.tasks import write_tasks
    from learner.tiny.warm_start import warm_start

    console.print(f"[bold]tiny default[/]: building model, tasks and warm start in {cache}")
    started = time.perf_counter()
    write_tiny_model(base, seed=tiny.seed, hidden=tiny.hidden, layers=tiny.layers)
    write_tasks(
        tasks, tiny.math_prompts, tiny.code_prompts, seed=tiny.seed, careful_fraction=tiny.careful_fraction
    )
    warm_start(
        base,
        [tasks / "math_train.jsonl", tasks / "code_train.jsonl"],
        warm,
        steps=tiny.warm_start_steps,
        lr=tiny.warm_start_lr,
        seed=tiny.seed,
    )
    seconds = time.perf_counter() - started
    console.print(f"tiny default ready in {seconds:.0f} s")
    return seconds
