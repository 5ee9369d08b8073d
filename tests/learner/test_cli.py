"""`python -m learner train` on a rollout file: metrics, checkpoint, Hugging Face model, errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import structlog
from transformers import AutoModelForCausalLM, AutoTokenizer

from learner.__main__ import main
from learner.training import checkpoint
from learner.training.rollout_file import write_groups
from tests.learner.rollouts import mixed_batch

ROOT = Path(__file__).resolve().parents[2]
DIST_VARS = {"RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"}
# The per-step fields the run directory promises (see the end-to-end run's metrics.jsonl).
TRAIN_FIELDS = {
    "kind", "step", "stage", "policy_version", "sample_versions", "reward_mean", "accuracy",
    "response_len_mean", "truncated_frac", "zero_var_frac", "entropy", "logprob_mismatch", "step_s",
    "tokens_per_s", "loss", "grad_norm", "lr", "logprob_mismatch_max", "logprob_mismatch_kl",
    "reward_mean_math", "reward_mean_code", "accuracy_math", "accuracy_code", "response_len_max",
}  # fmt: skip


@pytest.mark.slow
def test_train_from_a_rollout_file(tiny_model_dir: Path, tmp_path: Path) -> None:
    rollouts = tmp_path / "groups.bin"
    write_groups(rollouts, mixed_batch(seed=0) + mixed_batch(seed=1))  # 2 steps of 6 groups
    run_dir = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k not in DIST_VARS}
    done = subprocess.run(
        [sys.executable, "-m", "learner", "train", "--rollouts", str(rollouts), "--groups-per-step", "6",
         f"model.path={tiny_model_dir}", f"run_dir={run_dir}", "checkpoint.every_steps=2",
         "publish.address=tcp://127.0.0.1:*", "batching.micro_batch_tokens=64"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [0, 1]
    for record in lines:
        assert record.keys() >= TRAIN_FIELDS, TRAIN_FIELDS - record.keys()
        assert record["groups_unjudged"] == 1 and record["groups_zero_var"] == 2
        assert record["zero_var_frac"] == pytest.approx(2 / 5)
        assert record["publish_s"] >= 0 and record["micro_batches"] > 1
    assert lines[1]["policy_version"] == 1 and lines[1]["new_version"] == 2
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert (run_dir / "config.yaml").read_text().startswith("run_dir:")
    latest = checkpoint.find_latest(run_dir / "checkpoints")
    assert latest is not None and latest.name == "step_000000002"
    model = AutoModelForCausalLM.from_pretrained(latest / "hf")
    tokenizer = AutoTokenizer.from_pretrained(latest / "hf")
    # the export loads as a checkpoint: the model (vocabulary padded, as real ones are) with its tokenizer
    assert len(tokenizer) <= model.config.vocab_size == 512
    assert tokenizer.eos_token_id == model.config.eos_token_id


def test_bad_config_exits_with_the_field_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rollouts = tmp_path / "groups.bin"
    write_groups(rollouts, mixed_batch())
    try:
        code = main(["train", "--rollouts", str(rollouts), "--groups-per-step", "2", "grpo.clip_low=-1",
                     f"run_dir={tmp_path}"])  # fmt: skip
    finally:
        structlog.reset_defaults()  # main() pointed the logs at pytest's captured stderr
    assert code == 2
    assert "grpo.clip_low" in capsys.readouterr().err


def test_a_run_without_a_model_path_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recipe = tmp_path / "run.yaml"
    stage = "{name: a, kind: math, prompts: p.jsonl, steps: 1, max_response_tokens: 8, batch_prompts: 2, n: 2"
    recipe.write_text(f"schedule:\n  stages:\n    - {stage}, learning_rate: 1.0e-6}}\n")
    try:
        missing = main(["run", "--config", str(recipe), f"run_dir={tmp_path / 'run'}"])
        bad = main(["run", "--config", str(recipe), "schedule.stages.0.steps=0"])
    finally:
        structlog.reset_defaults()
    assert (missing, bad) == (2, 2)
    err = capsys.readouterr().err
    assert "error: model.path: required" in err
    assert (
        "error: override schedule.stages.0.steps=0: schedule.stages.0.steps: Input should be greater" in err
    )
    assert not (tmp_path / "run").exists()
