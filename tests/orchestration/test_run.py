"""The run loop with the real DeepSpeed learner, dispatcher and weight publisher over real
sockets; generators are scripted (the engine-backed ones are tested in test_run_engines.py)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from learner.config import RunConfig
from learner.orchestration.batch_log import read_batches
from learner.orchestration.run import train
from learner.orchestration.work_ledger import split_work_id
from proto.ready import read_ready
from tests.orchestration.scripted_generator import ScriptedGenerator

pytestmark = pytest.mark.slow


def prompt_files(tmp_path: Path) -> tuple[Path, Path]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    math = tmp_path / "math.jsonl"
    math.write_text(
        "".join(
            json.dumps({"id": f"m{i}", "prompt": f"{i}+1", "answer": str(i + 1)}) + "\n" for i in range(10)
        )
    )
    code = tmp_path / "code.jsonl"
    code.write_text(
        "".join(
            json.dumps({"id": f"c{i}", "prompt": f"print {i}", "tests": [{"input": "", "output": str(i)}]})
            + "\n"
            for i in range(6)
        )
    )
    return math, code


def config(tiny_model_dir: Path, tmp_path: Path, evals: bool = False, **schedule) -> RunConfig:
    math, code = prompt_files(tmp_path)
    eval_sets = (
        [{"task": "math", "prompts": math, "limit": 4}, {"task": "code", "prompts": code}] if evals else []
    )
    stage = {"max_response_tokens": 8, "batch_prompts": 3, "n": 4, "learning_rate": 1e-4}
    return RunConfig.model_validate(
        {
            "run_dir": tmp_path / "run",
            "model": {"path": tiny_model_dir},
            "metrics": {"tensorboard": False},
            "checkpoint": {"every_steps": 2, "hf_model": False},
            "dispatch": {"address": "tcp://127.0.0.1:*", "heartbeat_timeout_s": 10, "batch_timeout_s": 60},
            "eval": {"sets": eval_sets, "k": 4, "timeout_s": 60},
            "schedule": {
                "stages": [
                    {"name": "math-8", "kind": "math", "prompts": math, "steps": 3, **stage},
                    {"name": "code-16", "kind": "code", "prompts": code, "steps": 2, **stage},
                ],
                **schedule,
            },
        }
    )


def run_with_generators(cfg: RunConfig, count: int = 2, **train_args) -> tuple[dict, list[ScriptedGenerator]]:
    """Train in a thread; the generators connect to the port the dispatcher announces once bound."""
    ready_file = cfg.run_dir / "ready.json"
    ready_file.unlink(missing_ok=True)
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["summary"] = train(cfg, ready_file=ready_file, **train_args)
        except BaseException as exc:
            outcome["error"] = exc

    trainer = threading.Thread(target=run, name="train")
    trainer.start()
    deadline = time.monotonic() + 120
    while (ready := read_ready(ready_file)) is None and trainer.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ready is not None or "error" in outcome, "the learner never announced its addresses"
    generators = (
        [ScriptedGenerator(ready["dispatch"], f"g{i}", seed=i) for i in range(count)] if ready else []
    )
    for generator in generators:
        generator.start()
    try:
        trainer.join()
    finally:
        for generator in generators:
            generator.join(timeout=10)  # a finished run tells them to shut down
            generator.stop_event.set()
            generator.join(timeout=10)
    if "error" in outcome:
        raise outcome["error"]
    assert not ready["dispatch"].endswith(":*") and not ready["weights"].endswith(":*")
    assert [g.error for g in generators] == [None] * count
    return outcome["summary"], generators


def train_records(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == "train"]


@pytest.mark.parametrize("staleness", [0, 1])
def test_every_trained_sample_has_the_version_its_step_allows(
    tiny_model_dir: Path, tmp_path: Path, staleness: int
) -> None:
    cfg = config(tiny_model_dir, tmp_path, max_staleness=staleness)
    started = time.time()
    summary, generators = run_with_generators(cfg)
    assert summary["done"] and summary["steps"] == 5
    records = train_records(cfg.run_dir)
    # each step's wall-clock stamp (throughput over a run is read from these) is in order, in the run
    stamps = [r["time"] for r in records]
    assert started < stamps[0] and stamps == sorted(stamps) and stamps[-1] < time.time()
    batches = read_batches(cfg.run_dir)
    assert [r["step"] for r in records] == [b["step"] for b in batches] == list(range(5))
    for record, batch in zip(records, batches, strict=True):
        low, high = record["sample_versions"]
        assert record["step"] - staleness <= low <= high <= record["step"]
        assert all(record["step"] - staleness <= v <= record["step"] for v in batch["versions"])
    # math stage first, then code: never a math sample in the code stage
    assert [b["stage"] for b in batches] == [0, 0, 0, 1, 1]
    for batch in batches:
        assert {split_work_id(w)[0] for w in batch["work_ids"]} == {batch["stage"]}
        assert all(w.split("/")[2][0] == "mc"[batch["stage"]] for w in batch["work_ids"])
    # no prompt is trained twice within an epoch
    trained = [w for b in batches for w in b["work_ids"]]
    assert len(trained) == len(set(trained))
    assert {v for g in generators for v in g.announced} >= set(range(5))


def test_resume_mid_stage_trains_the_same_prompts(tiny_model_dir: Path, tmp_path: Path) -> None:
    straight = config(tiny_model_dir, tmp_path / "a")
    run_with_generators(straight, count=1)
    stopped = config(tiny_model_dir, tmp_path / "b")
    run_with_generators(stopped, count=1, max_steps=2)  # checkpoint at step 2, mid math stage
    summary, _ = run_with_generators(stopped, count=1, resume=True)
    assert summary["done"] and summary["steps"] == 5
    assert [b["work_ids"] for b in read_batches(stopped.run_dir)] == [
        b["work_ids"] for b in read_batches(straight.run_dir)
    ]


def test_held_out_evaluation_before_rl_and_after_every_stage(tiny_model_dir: Path, tmp_path: Path) -> None:
    cfg = config(tiny_model_dir, tmp_path, evals=True)
    summary, _ = run_with_generators(cfg)
    assert summary["done"]
    lines = (cfg.run_dir / "metrics.jsonl").read_text().splitlines()
    evals = [r for r in map(json.loads, lines) if r["kind"] == "eval"]
    # before RL (step 0), after the math stage (step 3), after the code stage (step 5)
    assert sorted({(r["step"], r["stage"]) for r in evals}) == [(0, 0), (3, 0), (5, 1)]
    for r in evals:
        assert r["n"] == (4 if r["task"] == "math" else 6) and r["skipped"] == 0
        # the scripted generators reward completions 0, 2, ...: avg@4 = 0.5, greedy (index 0) = 1
        assert r["accuracy"] == (1.0 if r["mode"] == "greedy" else 0.5)
        assert r["k"] == (1 if r["mode"] == "greedy" else 4)
    assert len(evals) == 3 * 2 * 2
    trained = [w for b in read_batches(cfg.run_dir) for w in b["work_ids"]]
    assert not [w for w in trained if w.startswith("eval/")]
