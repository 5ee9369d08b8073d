"""Metrics land in JSON Lines and TensorBoard; a resumed run rewinds the JSONL."""

from __future__ import annotations

import json
from pathlib import Path

from learner.metrics import MetricsWriter


def test_jsonl_and_tensorboard(tmp_path: Path) -> None:
    with MetricsWriter(tmp_path) as writer:
        for step in range(3):
            writer.write(
                {
                    "kind": "train",
                    "step": step,
                    "loss": 0.5 - step,
                    "grad_norm": float("nan"),
                    "sample_versions": [step, step],
                    "trained": True,
                }
            )
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [0, 1, 2]
    assert lines[1]["loss"] == -0.5 and lines[1]["grad_norm"] is None
    events = list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0


def test_drop_from_rewinds(tmp_path: Path) -> None:
    writer = MetricsWriter(tmp_path, tensorboard=False)
    for step in range(5):
        writer.write({"kind": "train", "step": step})
    writer.close()
    with (tmp_path / "metrics.jsonl").open("a") as f:
        f.write('{"kind": "train", "st')  # a line cut by a crash
    writer = MetricsWriter(tmp_path, tensorboard=False)
    assert writer.drop_from(3) == 3
    writer.write({"kind": "train", "step": 3})
    writer.close()
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == [0, 1, 2, 3]
