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
        ("reward.png", "training reward (mean)", [("reward_mean", "all")]),
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


def write_report(run_dir: Path, wall_s: float | None = None) -> Path:
    train, evals = read_metrics(run_dir)
    plots = plot(run_dir, train, evals)
    lines = [f"# Run report: {run_dir.name}", ""]
    if evals:
        lines += [
            "## Held-out accuracy",
            "",
            "| step | stage | task | mode | accuracy | prompts |",
            "|---|---|---|---|---|---|",
        ]
        for r in evals:
            mode = "greedy" if r.get("k") == 1 and r.get("temperature", 1) == 0 else f"avg@{r.get('k')}"
            lines.append(
                f"| {r['step']} | {r.get('stage_name', r.get('stage'))} | {r['task']} | {mode} | "
                f"{r['accuracy']:.3f} | {r.get('n', '')} |"
            )
        lines.append("")
    if train:
        by_stage: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for r in train:
            by_stage[r.get("stage_name", str(r.get("stage")))].append(r)
        lines += [
            "## Training",
            "",
            "| stage | steps | reward (first → last) | response length | step s | wait s | tokens/s |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, records in by_stage.items():

            def mean(key: str, rs: list[dict[str, Any]] = records) -> float:
                values = [r[key] for r in rs if r.get(key) is not None]
                return sum(values) / len(values) if values else 0.0

            lines.append(
                f"| {name} | {len(records)} | "
                f"{records[0]['reward_mean']:.3f} → {records[-1]['reward_mean']:.3f}"
                f" | {mean('response_len_mean'):.0f} | {mean('step_s'):.2f} | {mean('wait_s'):.2f} | "
                f"{mean('tokens_per_s'):.0f} |"
            )
        total_step = sum(r.get("step_s", 0) for r in train)
        total_wait = sum(r.get("wait_s", 0) for r in train)
        lines += [
            "",
            f"Steps: {len(train)}. Time in learner steps: {total_step:.0f} s; waiting for batches "
            f"(generation and judging): {total_wait:.0f} s; publishing: "
            f"{sum(r.get('publish_s', 0) for r in train):.0f} s.",
        ]
    if wall_s is not None:
        lines.append(f"Wall time of the run: {wall_s:.0f} s.")
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
