"""The run's metrics: typed records, written to `metrics.jsonl` and TensorBoard, and read back.

One line per record: `{"kind": "train", "step": 3, ...}` for a learner step, `{"kind": "eval", ...}`
for a held-out evaluation. The trainer and the run loop fill `TrainRecord`s, the run loop
`EvalRecord`s; the report and the supervisor's progress line read them with `read_records`.
A record's numeric fields also become TensorBoard scalars `<kind>/<field>` at its step.
Non-finite floats are written as null so that every line stays valid JSON.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any, Literal

import structlog
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from proto.config import describe

log = structlog.get_logger("learner.metrics")

Task = Literal["math", "code"]


class Record(BaseModel):
    """A line of metrics.jsonl. Fields that a writer did not set stay out of the line, so that a
    step that measured nothing writes what it knows, not a column of nulls."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: str
    step: int = Field(ge=0)

    def line(self) -> dict[str, Any]:
        """The fields as written: `kind` first, then every field that was set."""
        fields = self.model_dump(mode="json", exclude_unset=True, exclude={"kind"})
        return {"kind": self.kind, **_clean(fields)}


class TrainRecord(Record):
    """One learner step (docs/learner.md lists the fields). Measures of the update (loss, entropy,
    grad norm...) are null or absent when no token carried gradient (`trained: false`)."""

    # ...and dispatch_<counter>: what the dispatcher counted during the step (accepted, late...)
    model_config = ConfigDict(frozen=True, extra="allow")

    kind: Literal["train"] = "train"
    # where the step stands
    policy_version: int | None = None  # the version its samples had to come from
    new_version: int | None = None  # the version it produced
    trained: bool | None = None
    stage: int | None = None
    stage_name: str | None = None
    task: Task | None = None
    epoch: int | None = None
    sample_versions: tuple[int, int] | None = None  # [min, max] version of the trained groups
    # what the batch held
    groups: int | None = None
    groups_trained: int | None = None
    groups_unjudged: int | None = None
    groups_zero_var: int | None = None
    zero_var_frac: float | None = None
    completions: int | None = None
    reward_mean: float
    accuracy: float  # over the trained batch
    sampled_accuracy: float | None = None  # also over the groups dynamic sampling left out
    reward_mean_math: float | None = None
    reward_mean_code: float | None = None
    accuracy_math: float | None = None
    accuracy_code: float | None = None
    response_len_mean: float
    response_len_max: int | None = None
    truncated_frac: float | None = None
    expected_reward: float | None = None  # `learner demo`: the bandit's exact expected reward
    # the update
    loss: float | None = None
    loss_last: float | None = None  # with several updates per batch: the last one's
    entropy: float | None = None
    kl: float | None = None
    clip_frac: float | None = None
    grad_norm: float | None = None
    grad_norm_last: float | None = None
    lr: float | None = None
    logprob_mismatch: float | None = None
    logprob_mismatch_max: float | None = None
    logprob_mismatch_kl: float | None = None
    ranks: int = 1  # the learner's processes that shared the step
    micro_batches: int | None = None
    tokens: int | None = None
    loss_tokens: int | None = None
    optimizer_steps: int | None = None
    # time
    tokens_per_s: float | None = None
    step_s: float | None = None  # from the batch complete to the update done
    stream_s: float | None = None  # learner compute on the step's groups while the batch was coming
    streamed_parts: int | None = None  # forward/backward rounds of those (the last one after the wait)
    wait_s: float | None = None
    # wait_s cut into consecutive parts (learner/orchestration/step_timeline.py)
    reload_s: float | None = None
    generate_s: float | None = None
    judge_s: float | None = None
    return_s: float | None = None
    publish_s: float | None = None
    time: float | None = None  # Unix seconds once the step's weights were out
    # the step's judged groups and their completion tokens, by the generator that sampled them
    generator_groups: dict[str, int] | None = None
    generator_tokens: dict[str, int] | None = None

    @model_validator(mode="after")
    def _only_dispatch_counters(self) -> TrainRecord:
        for key, value in (self.model_extra or {}).items():
            if not key.startswith("dispatch_"):
                raise ValueError(f"unknown field {key!r} (extra fields are dispatch_<counter> only)")
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"{key}: a dispatcher counter is an integer, got {value!r}")
        return self


class EvalRecord(Record):
    """One held-out evaluation: one prompt set, one sampling mode, at one step."""

    kind: Literal["eval"] = "eval"
    stage: int | None = None  # the stage it follows (0 before RL)
    stage_name: str | None = None
    task: Task
    set_name: str | None = None  # which held-out set (EvalSet.label); a task may have several
    mode: str | None = None  # "avg4", "greedy"
    accuracy: float
    k: int = Field(ge=1)
    temperature: float | None = None
    n: int | None = None  # prompts scored
    skipped: int | None = None  # prompts given up on
    eval_s: float | None = None

    @property
    def greedy(self) -> bool:
        return self.k == 1 and self.temperature == 0

    @property
    def label(self) -> str:
        return "greedy" if self.greedy else f"avg@{self.k}"


def preferred_rounds(evals: list[EvalRecord]) -> list[EvalRecord]:
    """The sampled rounds (avg@k estimates pass@1) where a run has them, else its greedy ones."""
    return [r for r in evals if not r.greedy] or evals


AnyRecord = Annotated[TrainRecord | EvalRecord, Field(discriminator="kind")]
_RECORD: TypeAdapter[TrainRecord | EvalRecord] = TypeAdapter(AnyRecord)


def read_records(path: Path) -> list[TrainRecord | EvalRecord]:
    """Every record of a metrics.jsonl, in order. A last line cut by a crash (or being written
    right now) is skipped; any other bad line is an error naming it."""
    lines = path.read_text(encoding="utf-8").splitlines()
    records = []
    for number, text in enumerate(lines, 1):
        if not text.strip():
            continue
        try:
            data = json.loads(text)
        except ValueError:
            if number == len(lines):
                break
            raise ValueError(f"{path}, line {number}: not JSON: {text[:200]!r}") from None
        try:
            records.append(_RECORD.validate_python(data))
        except ValidationError as exc:
            raise ValueError(describe(exc, f"{path}, line {number}")) from None
    return records


def _clean(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
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

    def write(self, record: TrainRecord | EvalRecord) -> None:
        line = record.line()
        if self._file is not None:
            self._file.write(json.dumps(line, allow_nan=False) + "\n")
            self._file.flush()
        if self._tb is not None:
            prefix = record.kind
            if isinstance(record, EvalRecord):  # one curve per set and mode, not one for all
                prefix = f"eval/{record.set_name or record.task}/{record.mode}"
            for key, value in line.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "step":
                    self._tb.add_scalar(f"{prefix}/{key}", value, global_step=record.step)

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
