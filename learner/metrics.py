"""Per-step metrics to a JSON Lines file and TensorBoard event files.

Each record is one line of `metrics.jsonl` (`{"kind": "train", "step": ..., ...}`); its numeric
fields also become TensorBoard scalars `<kind>/<field>` at `step`. Non-finite floats are written
as null so that every line stays valid JSON.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import structlog

log = structlog.get_logger("learner.metrics")


def _clean(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if hasattr(value, "item"):  # numpy / torch scalars
        return _clean(value.item())
    return value


class MetricsWriter:
    def __init__(self, run_dir: Path, *, jsonl: bool = True, tensorboard: bool = True) -> None:
        run_dir.mkdir(parents=True, exist_ok=True)
        self.path = run_dir / "metrics.jsonl"
        self._file = self.path.open("a", encoding="utf-8") if jsonl else None
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter  # slow import: only when wanted

            self._tb = SummaryWriter(log_dir=str(run_dir / "tensorboard"))

    def write(self, record: dict[str, Any]) -> None:
        record = _clean(record)
        if self._file is not None:
            self._file.write(json.dumps(record, allow_nan=False) + "\n")
            self._file.flush()
        if self._tb is not None:
            kind, step = record.get("kind", "metrics"), record.get("step")
            for key, value in record.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "step":
                    self._tb.add_scalar(f"{kind}/{key}", value, global_step=step)

    def drop_from(self, step: int) -> int:
        """Remove records of steps >= `step` (a resumed run trains them again); returns how many."""
        if self._file is None or not self.path.exists():
            return 0
        self._file.close()
        kept, dropped = [], 0
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                record_step = json.loads(line).get("step")
            except ValueError:
                record_step = None  # a line cut by a crash
                dropped += 1
                continue
            if isinstance(record_step, int) and record_step >= step:
                dropped += 1
            else:
                kept.append(line + "\n")
        tmp = self.path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(kept), encoding="utf-8")
        tmp.replace(self.path)
        self._file = self.path.open("a", encoding="utf-8")
        if dropped:
            log.info("metrics_rewound", step=step, dropped=dropped)
        return dropped

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def __enter__(self) -> MetricsWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
