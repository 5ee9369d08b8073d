"""`acerl eval`: score a model on a prompt set, alone, with the same generators and judge as training.

    acerl eval --model DIR --prompts FILE [--k K] [--temperature T] [--max-tokens M] [--out DIR]
               [--recipe R] [--generators N] [--judge ADDRESS] [key=value ...]

It starts a judge (or uses the one at --judge), N generators of the recipe's settings on the
model, and an evaluation process (`python -m learner eval`) in the learner's place, supervised as
`acerl run` supervises a training. With `--generators 0` and `learner.dispatch.address=tcp://
0.0.0.0:PORT` it waits for generators started on other machines (`acerl generator`). Results:
OUT/per_prompt.jsonl and OUT/summary.json (docs/data.md). `acerl data passrate` is the same
with k = n, and keeps only {id, n, correct} per prompt.
"""

from __future__ import annotations

import argparse
import json
import signal
import time
from pathlib import Path
from typing import Any

from rich.progress_bar import ProgressBar
from rich.table import Table

from launch.prepare import prepare
from launch.recipe import load_recipe
from launch.supervisor import ROOT, Supervisor, console
from learner.evaluate import PROGRESS_FILE, add_eval_arguments
from proto.config import ConfigError, parse_command_line
from proto.ready import read_ready


def build_parser(prog: str = "acerl eval") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description=__doc__.split("\n")[0],
        epilog="Overrides are dotted paths into the recipe, e.g. generator.engine.max_model_len=40960; "
        "sampling defaults come from its learner.eval section, templates and stop strings from its "
        "last stage of the task.",
    )
    parser.add_argument(
        "--model", type=Path, help="Hugging Face model directory (default: the recipe's learner.model.path)"
    )
    add_eval_arguments(parser)
    parser.add_argument("--out", type=Path, help="results directory (default: runs/eval-<time>)")
    parser.add_argument("--recipe", type=Path, default=ROOT / "launch/recipes/tiny.yaml", help="recipe YAML")
    parser.add_argument("--generators", type=int, help="generator processes (default: the recipe's)")
    parser.add_argument("--judge", help="address of a running judge, instead of starting one")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides of the recipe")
    return parser


def passthrough(args: argparse.Namespace, out: Path) -> list[str]:
    """The flags of `python -m learner eval` that `args` carries."""
    argv = ["--prompts", str(args.prompts.resolve()), "--out", str(out)]
    for flag in ("task", "k", "temperature", "top_p", "max_tokens", "limit", "seed"):
        value = getattr(args, flag)
        if value is not None:
            argv += [f"--{flag.replace('_', '-')}", str(value)]
    return argv


def progress_view(path: Path) -> Any:
    progress = read_ready(path) or {}
    scored, total = int(progress.get("scored", 0)), int(progress.get("total", 0))
    if not total:
        return "waiting for the generators"
    grid = Table.grid(padding=(0, 1))
    grid.add_row(
        "evaluating", ProgressBar(total=total, completed=scored, width=40), f"{scored}/{total} prompts"
    )
    return grid


def evaluate(args: argparse.Namespace, out: Path) -> int:
    """Start, supervise and stop the components of one evaluation; its exit code."""
    overrides = list(args.overrides)
    if args.model is not None:
        overrides.append(f"learner.model.path={args.model.resolve()}")
    if args.generators is not None:
        overrides.append(f"generators={args.generators}")
    try:
        if args.model is not None and not (args.model / "config.json").exists():
            raise ConfigError(f"--model: no Hugging Face model (config.json) at {args.model}")
        recipe = load_recipe(args.recipe, overrides)
        prepare(recipe, console)  # a prepared recipe's held-out sets and model are built here
        if recipe.learner.model.path is None or not (recipe.learner.model.path / "config.json").exists():
            raise ConfigError(f"--model: no Hugging Face model (config.json) at {recipe.learner.model.path}")
        if not args.prompts.exists():
            raise ConfigError(f"--prompts: {args.prompts} does not exist")
        supervisor = Supervisor(
            recipe,
            out,
            resume=False,
            max_steps=None,
            evaluate=passthrough(args, out),
            judge_address=args.judge,
        )
    except ConfigError as exc:
        console.print(f"[red]error:[/] {exc}")
        return 2
    out.mkdir(parents=True, exist_ok=True)
    (out / PROGRESS_FILE).unlink(missing_ok=True)
    supervisor.write_configs()

    def on_signal(signum: int, frame: Any) -> None:
        supervisor.stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    started = time.perf_counter()
    code = 1
    try:
        supervisor.start_all()
        code = supervisor.watch(lambda: progress_view(out / PROGRESS_FILE))
    except (RuntimeError, TimeoutError) as exc:
        console.print(f"[red]evaluation stopped:[/] {exc}")
    finally:
        supervisor.stop_all()
    if code != 0:
        if code != 130:
            console.print(
                f"[red]the evaluation failed[/] (exit code {code}); its log ({supervisor.learner.log}):\n"
                f"{supervisor.learner.log_tail()}"
            )
        return code
    summary = json.loads((out / "summary.json").read_text())
    scores = {key: value for key, value in summary.items() if key.startswith("avg@")}
    console.print(
        f"[green]evaluated[/] {summary['prompts']} prompts in {time.perf_counter() - started:.0f} s: "
        + ", ".join(f"{key} {value:.4f}" for key, value in scores.items())
        + (f" ({len(summary['skipped'])} skipped)" if summary["skipped"] else "")
    )
    console.print(f"results: {out / 'per_prompt.jsonl'}, {out / 'summary.json'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_command_line(build_parser(), argv)
    out = (args.out or ROOT / "runs" / time.strftime("eval-%Y%m%d-%H%M%S")).resolve()
    return evaluate(args, out)


def passrate_main(argv: list[str] | None = None) -> int:
    """`acerl data passrate --model DIR --prompts IN --n 16 --output PASSRATE.jsonl [...]`."""
    parser = build_parser("acerl data passrate")
    parser.description = (
        "How often the model solves each prompt: n samples each through the generators and the judge; "
        "writes {id, n, correct} per prompt (for `acerl data select`)."
    )
    parser.add_argument("--n", type=int, default=16, help="samples per prompt")
    parser.add_argument("--output", type=Path, required=True, help="the pass-rate JSONL to write")
    args = parse_command_line(parser, argv)
    if args.k is not None and args.k != args.n:
        console.print("[red]error:[/] --k: give --n only (samples per prompt)")
        return 2
    args.k = args.n
    if args.temperature is None:
        args.temperature = 1.0  # the training temperature: which prompts the policy still misses
    out = (args.out or args.output.with_suffix(".eval")).resolve()
    code = evaluate(args, out)
    if code != 0:
        return code
    lines = []
    for line in (out / "per_prompt.jsonl").read_text().splitlines():
        row = json.loads(line)
        lines.append(json.dumps({"id": row["id"], "n": row["k"], "correct": row["correct"]}) + "\n")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text("".join(lines))
    skipped = json.loads((out / "summary.json").read_text())["skipped"]
    console.print(
        f"pass rates of {len(lines)} prompts: {args.output}"
        + (f" ({len(skipped)} skipped)" if skipped else "")
    )
    return 0
