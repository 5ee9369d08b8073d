"""Does the system learn, seed after seed, as well as a plain GRPO loop does?

For each seed s: `acerl run` of the tiny default with every seed set to s (the build: tokenizer,
model, tasks, warm start; the learner; the prompt order; the generator's sampler), which builds
the tiny default for that seed and trains it; then `bench.reference_grpo` from the same warm
start over the same math stages. Held-out accuracy (avg@k, the recipe's eval) comes from the
run's `eval` records: math before RL and after the math stages, code before and after the code
stages. Seconds per math step come from the `train` records' wall clock, leaving out the gaps
that hold an evaluation (and the first step, which has no gap before it).

Prints one line per seed, then:

    learning: seeds=S math_gain_min=... math_gain_median=... code_gain_min=... minutes=...
              ref_math_gain_median=... step_time_ratio=...

step_time_ratio is the median over seeds of (our seconds per math step / the reference's).

    python -m bench.learning [--seeds 3] [--math-only] [--threads 1] [key=value ...]

Overrides go to both sides, e.g. `learner.schedule.stages.0.steps=2` for a quick check. Every
process it starts is stopped when it ends, however it ends (Ctrl-C and SIGTERM included).
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from bench.reference_grpo import ReferenceResult, run_reference
from launch.process_group import kill_session, stop_process_group
from launch.recipe import Recipe, load_recipe
from learner.metrics import EvalRecord, TrainRecord, read_records

ROOT = Path(__file__).resolve().parents[1]
SEED_FIELDS = ("tiny.seed", "learner.seed", "learner.schedule.seed", "generator.engine.seed")
# The supervisor gives each component 15 s to stop; this leaves it time to do so for all of them.
STOP_GRACE_S = 90.0


@dataclass
class SystemResult:
    math: tuple[float, float]  # held-out avg@k before RL, after the math stages
    code: tuple[float, float] | None  # after the math stages, after the code stages
    step_s: list[float]  # per math step, evaluations excluded

    @property
    def math_gain(self) -> float:
        return self.math[1] - self.math[0]

    @property
    def code_gain(self) -> float | None:
        return None if self.code is None else self.code[1] - self.code[0]


def math_stages(recipe: Recipe) -> list[int]:
    """Indices of the leading math stages (the recipe's math-then-code order)."""
    stages = recipe.learner.schedule.stages
    leading = next((i for i, s in enumerate(stages) if s.kind != "math"), len(stages))
    return list(range(leading))


def read_run(run_dir: Path, recipe: Recipe, math_only: bool) -> SystemResult:
    """Held-out accuracies and seconds per math step from the run's metrics.jsonl."""
    last_math = math_stages(recipe)[-1]
    last_stage = len(recipe.learner.schedule.stages) - 1
    accuracy: dict[tuple[str, int], float] = {}  # (task, -1 before RL or the stage just ended)
    step_s: list[float] = []
    previous: float | None = None  # wall clock of the last train record; None after an evaluation
    for record in read_records(run_dir / "metrics.jsonl"):
        if isinstance(record, EvalRecord):
            previous = None
            if record.k > 1:
                where = -1 if record.step == 0 else record.stage
                accuracy[(record.task, where)] = record.accuracy
        elif record.task == "math" and record.time is not None:
            if previous is not None:
                step_s.append(record.time - previous)
            previous = record.time

    def held_out(task: str, where: int) -> float:
        if (task, where) not in accuracy:
            raise RuntimeError(f"{run_dir}: no {task} evaluation {'before RL' if where < 0 else where}")
        return accuracy[(task, where)]

    math = (held_out("math", -1), held_out("math", last_math))
    code = None if math_only else (held_out("code", last_math), held_out("code", last_stage))
    return SystemResult(math, code, step_s)


def stop(process: subprocess.Popen, run_dir: Path) -> None:
    """SIGTERM to `acerl run` (it stops its components), SIGKILL after a grace; then whatever it
    started in sessions of their own and left behind."""
    stop_process_group(process, STOP_GRACE_S)
    components = run_dir / "components.json"
    if components.exists():
        for component in json.loads(components.read_text()):
            if component.get("pid"):
                kill_session(component["pid"])


def run_system(
    recipe_path: Path,
    run_dir: Path,
    overrides: list[str],
    max_steps: int | None,
    on_step: Callable[[int], None],
) -> None:
    """`acerl run` to its end; `on_step(steps done)` as the run's train records appear."""
    run_dir.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "launch.cli", "run", "--recipe", str(recipe_path)]
    command += ["--run-dir", str(run_dir), *overrides]
    if max_steps is not None:
        command += ["--max-steps", str(max_steps)]
    log = run_dir / "acerl.log"
    process: subprocess.Popen | None = None
    try:
        with log.open("wb") as out:
            # a session of its own: Ctrl-C reaches this process only, which then stops the run in order
            process = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True
            )
        metrics = run_dir / "metrics.jsonl"
        while process.poll() is None:
            time.sleep(2.0)
            if metrics.exists():
                on_step(sum(isinstance(r, TrainRecord) for r in read_records(metrics)))
    finally:
        if process is not None:
            stop(process, run_dir)
    if process.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:])
        raise RuntimeError(f"acerl run exited with {process.returncode} (log: {log}):\n{tail}")


def mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else float("nan")


def fmt(before_after: tuple[float, float]) -> str:
    before, after = before_after
    return f"{before:.3f} -> {after:.3f} ({after - before:+.3f})"


@dataclass
class SeedResult:
    seed: int
    run_dir: Path
    system: SystemResult
    reference: ReferenceResult

    @property
    def reference_step_s(self) -> float:
        # its first step carries start-up, as the system's, which has no gap before it
        return mean(self.reference.step_s[1:] or self.reference.step_s)

    @property
    def step_time_ratio(self) -> float:
        return mean(self.system.step_s) / self.reference_step_s

    def line(self) -> str:
        r = self.reference
        code = "" if self.system.code is None else f"  code {fmt(self.system.code)}"
        return (
            f"seed {self.seed}: math {fmt(self.system.math)}  reference {fmt((r.before, r.after))}{code}  "
            f"s/step {mean(self.system.step_s):.2f} vs {self.reference_step_s:.2f} "
            f"(x{self.step_time_ratio:.2f})  {self.run_dir}"
        )


def one_seed(seed: int, args: argparse.Namespace, runs: Path, progress: Progress) -> SeedResult:
    """The system's run of one seed, then the reference loop from the warm start it built."""
    overrides = [f"{field}={seed}" for field in SEED_FIELDS] + args.overrides
    recipe = load_recipe(args.recipe, overrides)
    stages = recipe.learner.schedule.stages
    math_steps = sum(stages[i].steps for i in math_stages(recipe))
    max_steps = None
    if args.math_only:  # the math stages only, and no code evaluation after them
        math_sets = [s.model_dump(mode="json") for s in recipe.learner.eval.sets if s.task == "math"]
        overrides.append(f"learner.eval.sets={json.dumps(math_sets)}")
        recipe = load_recipe(args.recipe, overrides)
        max_steps = math_steps
    run_dir = runs / f"seed{seed}"
    task = progress.add_task(f"seed {seed}: build and run", total=max_steps or sum(s.steps for s in stages))
    run_system(args.recipe, run_dir, overrides, max_steps, lambda done: progress.update(task, completed=done))
    system = read_run(run_dir, recipe, args.math_only)
    task = progress.add_task(f"seed {seed}: reference", total=math_steps)
    reference = run_reference(
        recipe,
        threads=args.threads or recipe.learner.torch_threads or 1,
        on_step=lambda done, total, accuracy: progress.update(task, completed=done),
    )
    return SeedResult(seed, run_dir, system, reference)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0 .. S-1")
    parser.add_argument("--math-only", action="store_true", help="train only the math stages")
    parser.add_argument("--recipe", type=Path, default=ROOT / "launch/recipes/tiny.yaml")
    parser.add_argument("--runs", type=Path, default=ROOT / "runs", help="run directories go here")
    parser.add_argument("--threads", type=int, help="the reference's torch threads (default: the learner's)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides of the recipe")
    args = parser.parse_args()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        for each in (signal.SIGINT, signal.SIGTERM):  # a second one must not cut the clean-up short
            signal.signal(each, signal.SIG_IGN)
        raise SystemExit(128 + signum)  # unwinds through every `finally` that stops a process

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    started = time.perf_counter()
    runs = args.runs / f"learning-{time.strftime('%Y%m%d-%H%M%S')}"
    results: list[SeedResult] = []
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=Console()) as progress:
        for seed in range(args.seeds):
            results.append(one_seed(seed, args, runs, progress))
            progress.console.print(results[-1].line(), soft_wrap=True)
    math_gains = [r.system.math_gain for r in results]
    code_gains = [r.system.code_gain for r in results if r.system.code_gain is not None]
    print(
        f"learning: seeds={args.seeds} math_gain_min={min(math_gains):.3f} "
        f"math_gain_median={statistics.median(math_gains):.3f} "
        f"code_gain_min={f'{min(code_gains):.3f}' if code_gains else '-'} "
        f"minutes={(time.perf_counter() - started) / 60:.1f} "
        f"ref_math_gain_median={statistics.median(r.reference.gain for r in results):.3f} "
        f"step_time_ratio={statistics.median(r.step_time_ratio for r in results):.2f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
