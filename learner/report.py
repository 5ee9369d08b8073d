"""After a run: PNG plots of its metrics and a short `report.md`.

`python -m learner.report RUN_DIR`. Reads `metrics.jsonl` (train and eval records); plots
reward, held-out accuracy, response length and entropy against the step with the stage
boundaries marked; writes the table of held-out accuracy per stage, throughput and timings.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import matplotlib

from learner.metrics import EvalRecord, TrainRecord, preferred_rounds, read_records

matplotlib.use("Agg")  # files only; no display here
import matplotlib.pyplot as plt


def read_metrics(run_dir: Path) -> tuple[list[TrainRecord], list[EvalRecord]]:
    path = run_dir / "metrics.jsonl"
    records = read_records(path) if path.exists() else []
    train = [r for r in records if isinstance(r, TrainRecord)]
    return train, [r for r in records if isinstance(r, EvalRecord)]


def stage_of(record: TrainRecord) -> str:
    return record.stage_name if record.stage_name is not None else str(record.stage)


def stage_starts(train: list[TrainRecord]) -> list[tuple[int, str]]:
    starts, last = [], None
    for record in train:
        name = stage_of(record)
        if name != last:
            starts.append((record.step, name))
            last = name
    return starts


def plot(run_dir: Path, train: list[TrainRecord], evals: list[EvalRecord]) -> list[Path]:
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
            points = [(r.step, getattr(r, key)) for r in train if getattr(r, key) is not None]
            if points:
                axis.plot(*zip(*points, strict=True), label=label)
        mark_stages(axis)
        axis.set(title=title, xlabel="step")
        axis.legend(fontsize=8)
        figure.tight_layout()
        figure.savefig(run_dir / filename, dpi=100)
        plt.close(figure)
        written.append(run_dir / filename)
    written.append(plot_step_time(run_dir, train, mark_stages))
    figure, axis = plt.subplots(figsize=(7, 3.5))
    curves: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for record in evals:
        curves[f"{set_of(record)} {record.label}"].append((record.step, record.accuracy))
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


# a step's wall time, in the order it is spent (wait_s is reload..return where those were measured)
STEP_PARTS = [
    ("reload_s", "weights out, work issued"),
    ("generate_s", "generate"),
    ("judge_s", "judge (after the last sample)"),
    ("return_s", "return"),
    ("step_s", "train"),
    ("publish_s", "publish"),
]


def plot_step_time(run_dir: Path, train: list[TrainRecord], mark_stages: Any) -> Path:
    """Stacked bars: where each step's seconds went."""
    figure, axis = plt.subplots(figsize=(7, 3.5))
    steps = [r.step for r in train]
    bottom = [0.0] * len(train)
    parts = (
        STEP_PARTS
        if any(r.reload_s is not None for r in train)
        else [
            ("wait_s", "wait for the batch"),
            *STEP_PARTS[4:],
        ]
    )
    for key, label in parts:
        values = [getattr(r, key) or 0.0 for r in train]
        axis.bar(steps, values, bottom=bottom, width=1.0, label=label)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    mark_stages(axis)
    axis.set(title="where a step's time went (s)", xlabel="step")
    axis.legend(fontsize=7, loc="upper left")
    figure.tight_layout()
    path = run_dir / "step_time.png"
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def heldout_table(evals: list[EvalRecord]) -> list[str]:
    """One row per evaluation point (before RL, after each stage), one column per task and mode."""
    columns = sorted({(set_of(r), r.label) for r in evals})
    rows: dict[int, dict[Any, Any]] = {}
    for r in evals:
        row = rows.setdefault(r.step, {"when": "before RL" if r.step == 0 else f"after {r.stage_name}"})
        row[(set_of(r), r.label)] = r.accuracy
    lines = [
        "| step | when | " + " | ".join(f"{name} {mode}" for name, mode in columns) + " |",
        "|---" * (len(columns) + 2) + "|",
    ]
    for step, row in sorted(rows.items()):
        cells = [f"{row[c]:.3f}" if c in row else "" for c in columns]
        lines.append(f"| {step} | {row['when']} | " + " | ".join(cells) + " |")
    return lines


def set_of(record: EvalRecord) -> str:
    """The held-out set a record scores (records written before sets had names: its task)."""
    return record.set_name or record.task


def heldout_gains(train: list[TrainRecord], evals: list[EvalRecord]) -> list[str]:
    """Per held-out set: its sampled accuracy before the first stage of its task and after the last."""
    lines = []
    for name in sorted({set_of(r) for r in evals}):
        task = next(r.task for r in evals if set_of(r) == name)
        steps = [r.step for r in train if r.task == task]
        chosen = preferred_rounds([r for r in evals if set_of(r) == name])
        sampled = sorted((r.step, r.accuracy) for r in chosen)
        if not steps or not sampled:
            continue
        # evaluations run before a stage's first step and after its last step's update
        before = [a for s, a in sampled if s <= min(steps)]
        after = [a for s, a in sampled if s > max(steps)]
        if before and after:
            lines.append(
                f"- {name if name == task else f'{name} ({task})'}: {before[-1]:.3f} before its stages, "
                f"{after[0]:.3f} after them "
                f"({100 * (after[0] - before[-1]):+.1f} points)"
            )
    return lines


def sampled_accuracy(record: TrainRecord) -> float:
    """Accuracy over every group sampled, where the run counted the ones dynamic sampling left out."""
    return record.sampled_accuracy if record.sampled_accuracy is not None else record.accuracy


def total(values: Iterable[float | None]) -> float:
    return sum(v for v in values if v is not None)


def work_by_generator(train: list[TrainRecord]) -> list[str]:
    """Groups and completion tokens each generator gave over the run, and its fewest and most
    groups in one step (where two or more generators shared the steps)."""
    names = sorted({g for r in train for g in (r.generator_groups or {})})
    if len(names) < 2:
        return []
    groups = {g: [(r.generator_groups or {}).get(g, 0) for r in train] for g in names}
    tokens = {g: sum((r.generator_tokens or {}).get(g, 0) for r in train) for g in names}
    lines = ["", "## Work by generator", "", "| generator | groups | tokens | groups per step (min-max) |"]
    lines.append("|---|---|---|---|")
    for g in names:
        lines.append(f"| {g} | {sum(groups[g])} | {tokens[g]} | {min(groups[g])}-{max(groups[g])} |")
    return lines


def write_report(run_dir: Path, timings: dict[str, float] | None = None) -> Path:
    train, evals = read_metrics(run_dir)
    plots = plot(run_dir, train, evals)
    lines = [f"# Run report: {run_dir.name}", ""]
    if evals:
        lines += ["## Held-out accuracy", "", *heldout_table(evals), "", *heldout_gains(train, evals), ""]
    if train:
        by_stage: dict[str, list[TrainRecord]] = defaultdict(list)
        for r in train:
            by_stage[stage_of(r)].append(r)
        lines += [
            "## Training",
            "",
            "| stage | steps | accuracy (first → last) | response length | tokens/s | s per step: "
            "train after the wait | train during it | wait | of it: reload | generate | judge | return |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for name, records in by_stage.items():

            def mean(key: str, rs: list[TrainRecord] = records) -> float:
                values = [getattr(r, key) for r in rs if getattr(r, key) is not None]
                return sum(values) / len(values) if values else 0.0

            first, last = (sampled_accuracy(records[i]) for i in (0, -1))
            wait_parts = ("reload_s", "generate_s", "judge_s", "return_s")
            parts = " | ".join(f"{mean(key):.2f}" for key in wait_parts)
            lines.append(
                f"| {name} | {len(records)} | {first:.3f} → {last:.3f}"
                f" | {mean('response_len_mean'):.0f} | {mean('tokens_per_s'):.0f} | {mean('step_s'):.2f}"
                f" | {mean('stream_s'):.2f} | {mean('wait_s'):.2f} | {parts} |"
            )
    lines += work_by_generator(train)
    lines += ["", "## Where the time went", "", "| part | seconds |", "|---|---|"]
    for part, seconds in (timings or {}).items():
        lines.append(f"| {part} | {seconds:.0f} |")
    lines += [
        f"| learner steps ({len(train)}), after each wait | {total(r.step_s for r in train):.0f} |",
        f"| waiting for batches (generation, judging) | {total(r.wait_s for r in train):.0f} |",
        f"| of it: training the groups already in | {total(r.stream_s for r in train):.0f} |",
        f"| publishing weights | {total(r.publish_s for r in train):.0f} |",
        f"| held-out evaluation ({len(evals)} evaluations) | {total(r.eval_s for r in evals):.0f} |",
    ]
    for mode in sorted({r.label for r in evals}):
        of_mode = [r for r in evals if r.label == mode]
        lines.append(f"| of it: {mode} ({len(of_mode)}) | {total(r.eval_s for r in of_mode):.0f} |")
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
