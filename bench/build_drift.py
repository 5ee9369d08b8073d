"""What makes the tiny default's warm-started model differ from machine to machine.

Builds the tiny default (tokenizer, model, tasks, warm start; `launch/tiny_default.py`) several
times, each in a process of its own, changing one thing at a time against the first build:

    again          the same build a second time: is one machine deterministic?
    no SIMD        ATEN_CPU_CAPABILITY=default: torch's own kernels without vector instructions,
                   as another CPU picks other ones (AVX-512 where it has them)
    same init      the same, but from the first build's initial weights: the training alone
    MKL compatible MKL_CBWR=COMPATIBLE: MKL's matrix products by another code path, as MKL
                   picks per CPU model
    2 threads      torch.set_num_threads(2) in the warm start instead of 1
    seed 1         another seed: the spread to expect from chance alone

and compares tokenizer, tasks, initial and warm-started weights, and the warm start's loss
trajectory (the first step whose loss differs by more than 1e-6), and how far the weights are
apart along the way (max |dw| after steps 0, 1, 10, ...). With --eval, held-out math
accuracy of each warm-started model, greedy and avg@4 (transformers generation, the judge's check).

    python -m bench.build_drift [--steps 150] [--eval] [--out DIR] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import torch
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
NO_SIMD = {"ATEN_CPU_CAPABILITY": "default"}


@dataclass(frozen=True)
class Variant:
    env: dict[str, str] = field(default_factory=dict)
    threads: int = 1
    seed: int = 0
    first_init: bool = False  # start from the first build's initial weights


VARIANTS = {  # the first is what the others are compared with
    "first": Variant(),
    "again": Variant(),
    "no SIMD": Variant(NO_SIMD),
    "same init": Variant(NO_SIMD, first_init=True),
    "MKL compatible": Variant({"MKL_CBWR": "COMPATIBLE"}),
    "2 threads": Variant(threads=2),
    "seed 1": Variant(seed=1),
}
SNAPSHOTS = (0, 1, 10, 100, 1000)  # steps after which the weights are kept, to see them drift apart


def slug(name: str) -> str:
    return name.replace(" ", "-")


def build(out: Path, name: str, steps: int) -> None:
    """One build as `launch/tiny_default.build` makes it, recording every step's loss and the
    weights after the steps in SNAPSHOTS."""
    import learner.tiny.warm_start as warm
    from launch.recipe import load_recipe
    from learner.tiny.model import write_tiny_model
    from learner.tiny.tasks import write_tasks

    variant, here = VARIANTS[name], out / slug(name)
    tiny = load_recipe(ROOT / "launch/recipes/tiny.yaml").tiny
    losses: list[float] = []
    snapshots: dict[int, torch.Tensor] = {}

    def record(module: torch.nn.Module, inputs: object, output: object) -> None:
        if len(losses) in SNAPSHOTS:  # this forward runs on the weights after len(losses) steps
            snapshots[len(losses)] = torch.cat([p.detach().flatten() for p in module.parameters()])
        losses.append(output.loss.item())

    load = warm.AutoModelForCausalLM.from_pretrained

    def load_recording(*args: object, **kwargs: object) -> torch.nn.Module:
        model = load(*args, **kwargs)
        model.register_forward_hook(record)
        return model

    # the warm start's own loop runs unchanged; only its model reports what it computes
    warm.AutoModelForCausalLM = SimpleNamespace(from_pretrained=load_recording)
    if variant.first_init:
        shutil.copytree(out / "first" / "model", here / "model")
    else:
        write_tiny_model(here / "model", seed=variant.seed, hidden=tiny.hidden, layers=tiny.layers)
    tasks = write_tasks(
        here / "tasks",
        tiny.math_prompts,
        tiny.code_prompts,
        seed=variant.seed,
        careful_fraction=tiny.careful_fraction,
    )
    warm.warm_start(
        here / "model",
        [tasks["math_train"], tasks["code_train"]],
        here / "warm_start",
        steps=steps,
        lr=tiny.warm_start_lr,
        seed=variant.seed,
        threads=variant.threads,
    )
    torch.save(snapshots, here / "snapshots.pt")
    (here / "losses.json").write_text(json.dumps(losses))


def max_difference(a: Path, b: Path) -> float:
    from safetensors.torch import load_file

    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    return max(float((wa[k] - wb[k]).abs().max()) for k in wa)


def same_files(a: Path, b: Path, names: list[str]) -> bool:
    return all((a / name).read_bytes() == (b / name).read_bytes() for name in names)


def held_out_math(model_dir: Path, tasks: Path, limit: int = 200, max_tokens: int = 60) -> str:
    """Greedy and avg@4 at temperature 0.6 (top-p 0.95), as the run's evaluation: the first
    `limit` held-out prompts, the longest math stage's length."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from bench.reference_grpo import render, reward, sample
    from proto.prompt import load_prompts

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    prompts = load_prompts(tasks / "math_heldout.jsonl", "math")[:limit]
    rendered = [render(tokenizer, p.prompt) for p in prompts]
    scores = []
    for k, temperature, top_p in ((1, 0.0, 1.0), (4, 0.6, 0.95)):
        groups = sample(model, tokenizer, rendered, k, max_tokens, temperature, top_p)
        rewards = [reward(c, p.answer) for p, group in zip(prompts, groups, strict=True) for c in group]
        scores.append(sum(rewards) / len(rewards))
    return f"{scores[0]:.3f}, {scores[1]:.3f}"


def compare(out: Path, names: list[str], steps: int, evaluate: bool) -> Table:
    first = out / "first"
    first_losses = json.loads((first / "losses.json").read_text())
    first_snapshots = torch.load(first / "snapshots.pt")
    kept = sorted(first_snapshots)
    table = Table(title=f"tiny default builds of {steps} warm-start steps, against the first")
    table.add_column("build")
    for column in ("same tokenizer, tasks", "loss apart from step", "loss, last 100 steps"):
        table.add_column(column, justify="right")
    for step in kept:
        table.add_column(f"max |dw| after {step}", justify="right")
    table.add_column(f"after {steps}", justify="right")
    table.add_column("held-out math: greedy, avg@4", justify="right")
    for name in names:
        here = out / slug(name)
        losses = json.loads((here / "losses.json").read_text())
        snapshots = torch.load(here / "snapshots.pt")
        same = same_files(first / "model", here / "model", ["tokenizer.json"]) and same_files(
            first / "tasks", here / "tasks", ["math_train.jsonl", "code_train.jsonl"]
        )
        apart = [s for s, (a, b) in enumerate(zip(first_losses, losses, strict=True)) if abs(a - b) > 1e-6]
        drift = [float((snapshots[s] - first_snapshots[s]).abs().max()) for s in kept]
        drift.append(max_difference(first / "warm_start", here / "warm_start"))
        table.add_row(
            name,
            "yes" if same else "no",
            str(apart[0]) if apart else "never",
            f"{sum(losses[-100:]) / len(losses[-100:]):.4f}",
            *([f"{d:.1e}" for d in drift] if same else ["-"] * len(drift)),
            held_out_math(here / "warm_start", here / "tasks") if evaluate else "-",
        )
    return table


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=150, help="warm-start steps of each build")
    parser.add_argument("--eval", action="store_true", help="greedy held-out math accuracy of each")
    parser.add_argument("--out", type=Path, help="where the builds go (default: a temporary directory)")
    parser.add_argument("--only", nargs="+", choices=VARIANTS, help="these builds (and the first)")
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)  # one build, in --out
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="build-drift-"))
    if args.variant:
        build(out, args.variant, args.steps)
        return
    console = Console(width=170)  # the table is wide; a log file should get it whole
    names = [n for n in VARIANTS if args.only is None or n == "first" or n in args.only]
    for name in names:
        variant = VARIANTS[name]
        if not (out / slug(name) / "losses.json").exists():  # kept from an earlier call with this --out
            console.print(f"building [bold]{name}[/] in {out / slug(name)}")
            command = [sys.executable, "-m", "bench.build_drift", "--steps", str(args.steps)]
            command += ["--out", str(out), "--variant", name]
            subprocess.run(command, env={**os.environ, **variant.env}, cwd=ROOT, check=True)
    console.print(compare(out, names, args.steps, args.eval))


if __name__ == "__main__":
    main()
