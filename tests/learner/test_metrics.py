"""Metrics records: typed, written to JSON Lines and TensorBoard, read back; a resume rewinds them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from learner.metrics import EvalRecord, MetricsWriter, TrainRecord, read_records


def train(step: int, **fields: object) -> TrainRecord:
    return TrainRecord(step=step, reward_mean=0.5, accuracy=0.25, response_len_mean=12.0, **fields)


def test_jsonl_and_tensorboard(tmp_path: Path) -> None:
    with MetricsWriter(tmp_path) as writer:
        for step in range(3):
            writer.write(train(step, loss=0.5 - step, grad_norm=float("nan"), sample_versions=(step, step)))
        writer.write(EvalRecord(step=3, task="math", mode="avg4", accuracy=0.5, k=4, temperature=0.6))
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [0, 1, 2, 3]
    assert lines[1]["loss"] == -0.5 and lines[1]["grad_norm"] is None  # not finite: null
    assert lines[1]["sample_versions"] == [1, 1]
    events = list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0


def test_a_line_holds_what_was_set_and_reads_back_the_same(tmp_path: Path) -> None:
    measured = train(0, trained=True, loss=0.1, dispatch_accepted=4, dispatch_late=1)
    untrained = train(1, trained=False, loss=None)  # no token carried gradient: null, not absent
    greedy = EvalRecord(step=2, stage=0, task="code", mode="greedy", accuracy=1.0, k=1, temperature=0.0)
    with MetricsWriter(tmp_path, tensorboard=False) as writer:
        for record in (measured, untrained, greedy):
            writer.write(record)
    first, second, third = map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines())
    assert list(first) == [
        "kind", "step", "trained", "reward_mean", "accuracy", "response_len_mean", "loss",
        "dispatch_accepted", "dispatch_late",
    ]  # fmt: skip
    assert second["loss"] is None and "entropy" not in second
    assert third["kind"] == "eval" and "n" not in third
    assert read_records(tmp_path / "metrics.jsonl") == [measured, untrained, greedy]
    assert greedy.label == "greedy" and EvalRecord(step=0, task="math", accuracy=0, k=4).label == "avg@4"


def test_a_torn_last_line_is_skipped_and_any_other_bad_line_named(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    whole = json.dumps(train(0).line()) + "\n"
    path.write_text(whole + '{"kind": "train", "step": 1, "rew')
    assert read_records(path) == [train(0)]
    path.write_text('{"kind": "train", "st\n' + whole)
    with pytest.raises(ValueError, match=r"line 1: not JSON"):
        read_records(path)
    path.write_text(whole + '{"kind": "train", "step": 1}\n')
    with pytest.raises(ValueError, match=r"line 2: .*reward_mean"):
        read_records(path)
    path.write_text('{"kind": "warmup", "step": 0}\n')
    with pytest.raises(ValueError, match=r"line 1: .*warmup"):
        read_records(path)


def test_fields_are_checked() -> None:
    with pytest.raises(ValidationError, match="rewad_mean"):
        train(0, rewad_mean=1.0)  # a misspelt field is not a dispatcher counter
    with pytest.raises(ValidationError, match="integer"):
        train(0, dispatch_accepted=1.5)
    with pytest.raises(ValidationError, match="task"):
        EvalRecord(step=0, task="poetry", accuracy=0.5, k=4)


def test_drop_from_rewinds(tmp_path: Path) -> None:
    writer = MetricsWriter(tmp_path, tensorboard=False)
    for step in range(5):
        writer.write(train(step))
    writer.close()
    with (tmp_path / "metrics.jsonl").open("a") as f:
        f.write('{"kind": "train", "st')  # a line cut by a crash
    writer = MetricsWriter(tmp_path, tensorboard=False)
    assert writer.drop_from(3) == 3
    writer.write(train(3))
    writer.close()
    assert [r.step for r in read_records(tmp_path / "metrics.jsonl")] == [0, 1, 2, 3]
