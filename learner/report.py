"""After a run: PNG plots of its metrics and a short `report.md`.

`python -m learner.report RUN_DIR`. Reads `metrics.jsonl` (train and eval records); plots
reward, held-out accuracy, response length and entropy against the step with the stage
boundaries marked; writes the table of held-out accuracy per stage, throughput and timings.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; no display here
import matplotlib.pyplot as plt


def read_metrics(run_dir: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    path = run_dir / "metrics.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines() if line] if path.exists() else []
    return [r for r in records if r.get("kind") == "train"], [r for r in records if r.get("kind") == "eval"]


def stage_starts(train: list[dict[str, Any]]) -> list[tuple[int, str]]:
    starts, last = [], None
    for record in train:
        name = record.get("stage_name", str(record.get("stage")))
        if name != last:
            starts.append((record["step"], name))
            last = name
    return starts


def plot(run_dir: Path, train: list[dict[str, Any]], evals: list[dict[str, Any]]) -> list[Path]:
    panels = [
        (
            "reward.png",
            "training reward and accuracy",
            [
                ("reward_mean", "reward (trained batch)"),
                ("sampled_accuracy", "accuracy (every group sampled)"),
            ],
        ),
        (
            "response_length.png",
            "response length (tokens)",
            [("response_len_mean", "mean"), ("response_len_max", "max")],
        ),
        ("entropy.png", "policy entropy (nats/token)", [("entropy", "entropy")]),
    ]
    written = []
    starts = stage_starts(train)

    def mark_stages(axis: Any) -> None:
        for step, name in starts:
            axis.axvline(step, color="grey", linestyle=":", linewidth=1)
            axis.annotate(
                name,
                (step, 1.0),
                xycoords=("data", "axes fraction"),
                fontsize=7,
                rotation=90,
                va="top",
                ha="right",
                color="grey",
            )

    for filename, title, series in panels:
        figure, axis = plt.subplots(figsize=(7, 3.5))
        for key, label in series:
            points = [(r["step"], r[key]) for r in train if r.get(key) is not None]
            if points:
                axis.plot(*zip(*points, strict=True), label=label)
        mark_stages(axis)
        axis.set(title=title, xlabel="step")
        axis.legend(fontsize=8)
        figure.tight_layout()
        figure.savefig(run_dir / filename, dpi=100)
        plt.close(figure)
        written.append(run_dir / filename)
    figure, axis = plt.subplots(figsize=(7, 3.5))
    curves: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for record in evals:
        mode = (
            "greedy"
            if record.get("k") == 1 and record.get("temperature", 1) == 0
            else f"avg@{record.get('k')}"
        )
        curves[f"{record['task']} {mode}"].append((record["step"], record["accuracy"]))
    for label, points in sorted(curves.items()):
        axis.plot(*zip(*sorted(points), strict=True), marker="o", label=label)
    mark_stages(axis)
    axis.set(title="held-out accuracy", xlabel="step", ylim=(0, 1))
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(run_dir / "heldout_accuracy.png", dpi=100)
    plt.close(figure)
    written.append(run_dir / "heldout_accuracy.png")
    return written


def eval_mode(record: dict[str, Any]) -> str:
    return (
        "greedy" if record.get("k") == 1 and record.get("temperature", 1) == 0 else f"avg@{record.get('k')}"
    )


def heldout_table(evals: list[dict[str, Any]]) -> list[str]:
    """One row per evaluation point (before RL, after each stage), one column per task and mode."""
    columns = sorted({(r["task"], eval_mode(r)) for r in evals})
    rows: dict[int, dict[str, Any]] = {}
    for r in evals:
        row = rows.setdefault(
            r["step"], {"when": "before RL" if r["step"] == 0 else f"after {r.get('stage_name')}"}
        )
        row[(r["task"], eval_mode(r))] = r["accuracy"]
    lines = [
        "| step | when | " + " | ".join(f"{task} {mode}" for task, mode in columns) + " |",
        "|---" * (len(columns) + 2) + "|",
    ]
    for step, row in sorted(rows.items()):
        cells = [f"{row[c]:.3f}" if c in row else "" for c in columns]
        lines.append(f"| {step} | {row['when']} | " + " | ".join(cells) + " |")
    return lines


def heldout_gains(train: list[dict[str, Any]], evals: list[dict[str, Any]]) -> list[str]:
    """Per task: sampled held-out accuracy before its first stage and after its last one."""
    lines = []
    for task in sorted({r["task"] for r in evals}):
        steps = [r["step"] for r in train if r.get("task") == task]
        sampled = sorted((r["step"], r["accuracy"]) for r in evals if r["task"] == task and r.get("k", 1) > 1)
        if not steps or not sampled:
            continue
        # evaluations run before a stage's first step and after its last step's update
        before = [a for s, a in sampled if s <= min(steps)]
        after = [a for s, a in sampled if s > max(steps)]
        if before and after:
            lines.append(
                f"- {task}: {before[-1]:.3f} before its stages, {after[0]:.3f} after them "
                f"({100 * (after[0] - before[-1]):+.1f} points)"
            )
    return lines


def write_report(run_dir: Path, timings: dict[str, float] | None = None) -> Path:
    train, evals = read_metrics(run_dir)
    plots = plot(run_dir, train, evals)
    lines = [f"# Run report: {run_dir.name}", ""]
    if evals:
        lines += ["## Held-out accuracy", "", *heldout_table(evals), "", *heldout_gains(train, evals), ""]
    if train:
        by_stage: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for r in train:
            by_stage[r.get("stage_name", str(r.get("stage")))].append(r)
        lines += [
            "## Training",
            "",
            "| stage | steps | accuracy (first → last) | response length | step s | wait s | tokens/s |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, records in by_stage.items():

            def mean(key: str, rs: list[dict[str, Any]] = records) -> float:
                values = [r[key] for r in rs if r.get(key) is not None]
                return sum(values) / len(values) if values else 0.0

            first, last = (records[i].get("sampled_accuracy", records[i]["accuracy"]) for i in (0, -1))
            lines.append(
                f"| {name} | {len(records)} | {first:.3f} → {last:.3f}"
                f" | {mean('response_len_mean'):.0f} | {mean('step_s'):.2f} | {mean('wait_s'):.2f} | "
                f"{mean('tokens_per_s'):.0f} |"
            )
    lines += ["", "## Where the time went", "", "| part | seconds |", "|---|---|"]
    for part, seconds in (timings or {}).items():
        lines.append(f"| {part} | {seconds:.0f} |")
    lines += [
        f"| learner steps ({len(train)}) | {sum(r.get('step_s', 0) for r in train):.0f} |",
        f"| waiting for batches (generation, judging) | {sum(r.get('wait_s', 0) for r in train):.0f} |",
        f"| publishing weights | {sum(r.get('publish_s', 0) for r in train):.0f} |",
        f"| held-out evaluation ({len(evals)} evaluations) | {sum(r.get('eval_s', 0) for r in evals):.0f} |",
    ]
    lines += ["", "## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots]
    report = run_dir / "report.md"
    report.write_text("\n".join(lines) + "\n")
    return report


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run_dir", type=Path)
    print(write_report(parser.parse_args().run_dir))


if __name__ == "__main__":
    main()
