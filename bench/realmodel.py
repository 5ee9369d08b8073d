"""A real pretrained model through the whole system: SmolLM2-135M-Instruct, a short run of its recipe.

The run is launch/recipes/smollm2-135m.yaml cut to its math stage (`--steps` steps) and its
held-out arithmetic set (`--heldout` prompts, greedy, before and after). Prints:

    realmodel: params=... gen_tokens_per_s=... step_s=... weight_update_s=... mismatch=... heldout_gain=...

- params: the model's parameters (its safetensors, tied embeddings counted once);
- gen_tokens_per_s: completion tokens sampled over the seconds the steps spent generating;
- step_s: median wall time of a step (sampling, judging, training, publishing);
- weight_update_s: median time from the learner serving a version to the generator holding it
  (publish_s + reload_s of the step's records);
- mismatch: median over steps of the mean |sampler - learner| log-probability per token;
- heldout_gain: greedy held-out accuracy after the steps minus before.

    python -m bench.realmodel [--steps 8] [--heldout 100] [--run-dir DIR] [--from-run DIR] [key=value ...]

`--from-run DIR` reads a finished run of the recipe instead of starting one (its first math set).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import struct
import time
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console

from bench.learning import run_system
from learner.metrics import EvalRecord, TrainRecord, read_records

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "launch/recipes/smollm2-135m.yaml"
console = Console(stderr=True)


def parameters(model_dir: Path) -> int:
    """Elements of every tensor in the model's safetensors files, read from their headers."""
    total = 0
    for path in sorted(model_dir.glob("*.safetensors")):
        with path.open("rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(length))
        for name, entry in header.items():
            if name != "__metadata__":
                total += math.prod(entry["shape"])
    return total


def short_recipe(path: Path, steps: int, heldout: int) -> dict[str, Any]:
    """The recipe's math stage alone, `steps` long, scored on its first math set's first prompts."""
    recipe = yaml.safe_load(RECIPE.read_text())
    learner = recipe["learner"]
    math_stage = next(s for s in learner["schedule"]["stages"] if s["kind"] == "math")
    learner["schedule"]["stages"] = [dict(math_stage, steps=steps)]
    first_set = next(s for s in learner["eval"]["sets"] if s["task"] == "math")
    learner["eval"]["sets"] = [dict(first_set, limit=heldout)]
    path.write_text(yaml.safe_dump(recipe))
    return recipe


def figures(run_dir: Path) -> dict[str, float]:
    records = read_records(run_dir / "metrics.jsonl")
    train = [r for r in records if isinstance(r, TrainRecord) and r.task == "math"]
    evals = [r for r in records if isinstance(r, EvalRecord) and r.task == "math"]
    first_set = evals[0].set_name
    scores = [r for r in evals if r.set_name == first_set]
    # the score right after the math steps (a full run goes on to code, then scores it again)
    after = next((r for r in scores if r.step > max(t.step for t in train)), scores[-1])
    tokens = sum(sum((r.generator_tokens or {}).values()) for r in train)
    generating = sum(r.generate_s or 0.0 for r in train)
    # a step's wall time: from the previous step's weights out to its own, with no evaluation between
    walls, previous = [], None
    for record in records:
        if isinstance(record, EvalRecord):
            previous = None
        elif isinstance(record, TrainRecord) and record.time is not None:
            if previous is not None and record.task == "math":
                walls.append(record.time - previous)
            previous = record.time
    config = yaml.safe_load((run_dir / "learner.yaml").read_text())
    return {
        "params": parameters(Path(config["model"]["path"])),
        "gen_tokens_per_s": tokens / generating if generating else float("nan"),
        "step_s": statistics.median(walls) if walls else float("nan"),
        "weight_update_s": statistics.median((r.publish_s or 0.0) + (r.reload_s or 0.0) for r in train),
        "mismatch": statistics.median(r.logprob_mismatch for r in train if r.logprob_mismatch is not None),
        "heldout_before": scores[0].accuracy,
        "heldout_after": after.accuracy,
        "heldout_gain": after.accuracy - scores[0].accuracy,
        "steps": len(train),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=8, help="math steps of the short run")
    parser.add_argument("--heldout", type=int, default=100, help="held-out arithmetic prompts")
    parser.add_argument("--run-dir", type=Path, help="default: runs/bench-realmodel-<time>")
    parser.add_argument("--from-run", type=Path, help="read a finished run instead of starting one")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides of the recipe")
    args = parser.parse_args(argv)
    run_dir = args.from_run
    if run_dir is None:
        run_dir = (args.run_dir or ROOT / "runs" / time.strftime("bench-realmodel-%Y%m%d-%H%M%S")).resolve()
        run_dir.mkdir(parents=True, exist_ok=True)
        recipe_path = run_dir.parent / f"{run_dir.name}.recipe.yaml"
        short_recipe(recipe_path, args.steps, args.heldout)
        started = time.perf_counter()
        with console.status(f"a {args.steps}-step run of {RECIPE.name} in {run_dir}") as status:

            def on_step(done: int) -> None:
                status.update(
                    f"{RECIPE.name}: step {done} of {args.steps} ({time.perf_counter() - started:.0f} s)"
                )

            run_system(recipe_path, run_dir, list(args.overrides), None, on_step)
        console.print(f"run finished in {time.perf_counter() - started:.0f} s: {run_dir}")
    f = figures(run_dir)
    console.print(
        f"held-out ({f['steps']} math steps): {f['heldout_before']:.3f} -> {f['heldout_after']:.3f}"
    )
    print(
        f"realmodel: params={f['params'] / 1e6:.1f}M gen_tokens_per_s={f['gen_tokens_per_s']:.1f} "
        f"step_s={f['step_s']:.1f} weight_update_s={f['weight_update_s']:.2f} mismatch={f['mismatch']:.2e} "
        f"heldout_gain={f['heldout_gain']:+.3f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
