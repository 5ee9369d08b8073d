"""`batches.jsonl`: which groups each step trained, so that a run can be audited afterwards
(every prompt trained at most once per epoch, every sample of the version its step allows)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from proto.rollout import RolloutGroup


class BatchLog:
    def __init__(self, run_dir: Path) -> None:
        run_dir.mkdir(parents=True, exist_ok=True)
        self.path = run_dir / "batches.jsonl"

    def drop_from(self, step: int) -> None:
        """Forget steps >= `step`: a resumed run trains them again."""
        if not self.path.exists():
            return
        kept = [
            line for line in self.path.read_text().splitlines() if line and json.loads(line)["step"] < step
        ]
        self.path.write_text("".join(line + "\n" for line in kept))

    def write(self, step: int, stage: int, batch: list[RolloutGroup]) -> None:
        record = {
            "step": step,
            "stage": stage,
            "work_ids": [group.work_id for group in batch],
            "versions": [group.policy_version for group in batch],
            "generators": sorted({group.generator_id for group in batch}),
            "statuses": dict(Counter(c.judge_status for group in batch for c in group.completions)),
        }
        with self.path.open("a") as out:
            out.write(json.dumps(record) + "\n")


def read_batches(run_dir: Path) -> list[dict]:
    path = run_dir / "batches.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line] if path.exists() else []
