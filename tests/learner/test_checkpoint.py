"""Checkpoints in one process: exact resume, half-written ones ignored, a crash mid-save harmless."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from learner.config import LearnerConfig
from learner.tiny.bandit import TargetTokenBandit
from learner.training import checkpoint
from learner.training.grpo import select_groups
from learner.training.trainer import Learner

pytestmark = pytest.mark.slow


def make(model_dir: Path, run_dir: Path, **checkpoint_cfg: object) -> tuple[Learner, TargetTokenBandit]:
    cfg = LearnerConfig.model_validate(
        {
            "run_dir": run_dir,
            "model": {"path": model_dir},
            "optim": {"lr": 3e-3, "warmup_steps": 3},  # the scheduler's state matters too
            "checkpoint": {"keep_last": 2, **checkpoint_cfg},
        }
    )
    learner = Learner(cfg)
    return learner, TargetTokenBandit(learner.engine.module.config.vocab_size, prompts=4, n=4)


def run_steps(learner: Learner, task: TargetTokenBandit, steps: int) -> list[float]:
    losses = []
    for _ in range(steps):
        batch = select_groups(task.sample(learner.engine.module, learner.version), drop_zero_variance=True)
        losses.append(learner.train_step(batch)["loss"])
    return losses


def params(learner: Learner) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in learner.engine.module.named_parameters()}


def test_resume_continues_exactly(tiny_model_dir: Path, tmp_path: Path) -> None:
    a, task_a = make(tiny_model_dir, tmp_path / "run")
    run_steps(a, task_a, 2)
    path = a.save_checkpoint({"cursor": {"math": 7}, "removed": ["p1"]})
    after = run_steps(a, task_a, 2)
    expected = params(a)

    b, task_b = make(tiny_model_dir, tmp_path / "run")
    state = b.resume()
    assert state is not None and state.path == path
    assert (b.step, b.version, state.optimizer_steps) == (2, 2, 2)
    assert state.extra_state == {"cursor": {"math": 7}, "removed": ["p1"]}
    assert b.engine.lr == pytest.approx(3e-3)  # warm-up (3 steps) over: the restored scheduler says so
    assert run_steps(b, task_b, 2) == after
    got = params(b)
    for name in expected:
        assert torch.equal(got[name], expected[name]), name

    # The Hugging Face copy loads with the standard classes and holds the step's weights.
    hf = AutoModelForCausalLM.from_pretrained(path / "hf")
    assert AutoTokenizer.from_pretrained(path / "hf").eos_token == "<|endoftext|>"
    assert hf.config.vocab_size == b.engine.module.config.vocab_size


def test_half_written_checkpoints_are_ignored(tiny_model_dir: Path, tmp_path: Path) -> None:
    learner, task = make(tiny_model_dir, tmp_path / "run")
    run_steps(learner, task, 1)
    good = learner.save_checkpoint()
    root = learner.cfg.checkpoint_dir
    # (1) a newer directory without its manifest, (2) one whose file was cut short after the
    # manifest was written, (3) a temporary directory left by a crash.
    no_manifest = root / checkpoint.checkpoint_name(5)
    shutil.copytree(good, no_manifest)
    (no_manifest / checkpoint.MANIFEST).unlink()
    cut = root / checkpoint.checkpoint_name(6)
    shutil.copytree(good, cut)
    engine_file = next((cut / "engine").rglob("*.pt"))
    engine_file.write_bytes(engine_file.read_bytes()[:100])
    (root / ".tmp-step_000000007").mkdir()
    assert not checkpoint.is_complete(no_manifest) and not checkpoint.is_complete(cut)
    assert checkpoint.find_latest(root) == good

    fresh, _ = make(tiny_model_dir, tmp_path / "run")
    state = fresh.resume()
    assert state is not None and state.step == 1
    with pytest.raises(FileNotFoundError, match="not a complete checkpoint"):
        checkpoint.load(cut, fresh.engine)


def test_crash_mid_save_keeps_the_last_good_one(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    learner, task = make(tiny_model_dir, tmp_path / "run")
    run_steps(learner, task, 1)
    good = learner.save_checkpoint()
    manifest = json.loads((good / checkpoint.MANIFEST).read_text())
    run_steps(learner, task, 1)

    def crash(directory: Path) -> None:
        directory.mkdir(parents=True)
        (directory / "model.safetensors").write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(learner.engine, "save_pretrained", crash)
    with pytest.raises(OSError, match="disk full"):
        learner.save_checkpoint()
    root = learner.cfg.checkpoint_dir
    assert (root / ".tmp-step_000000002").exists()  # the debris of the failed save
    assert checkpoint.find_latest(root) == good
    assert json.loads((good / checkpoint.MANIFEST).read_text()) == manifest

    monkeypatch.undo()
    saved = learner.save_checkpoint()  # the next save clears the debris
    assert saved.name == "step_000000002" and not (root / ".tmp-step_000000002").exists()


def test_keep_last_prunes_old_checkpoints(tiny_model_dir: Path, tmp_path: Path) -> None:
    learner, task = make(tiny_model_dir, tmp_path / "run", hf_model=False)
    for _ in range(4):
        run_steps(learner, task, 1)
        learner.save_checkpoint()
    kept = [p.name for p in checkpoint.complete_checkpoints(learner.cfg.checkpoint_dir)]
    assert kept == ["step_000000003", "step_000000004"]


def test_extra_state_must_be_json(tiny_model_dir: Path, tmp_path: Path) -> None:
    learner, _ = make(tiny_model_dir, tmp_path / "run")
    with pytest.raises(TypeError, match="extra_state"):
        learner.save_checkpoint({"leases": {1, 2}})
    assert checkpoint.find_latest(learner.cfg.checkpoint_dir) is None


def test_stage_learning_rate_survives_resume(tiny_model_dir: Path, tmp_path: Path) -> None:
    learner, task = make(tiny_model_dir, tmp_path / "run")
    run_steps(learner, task, 3)  # warm-up over
    learner.engine.set_lr(5e-6)  # a new stage's learning rate
    assert learner.engine.lr == pytest.approx(5e-6)
    run_steps(learner, task, 1)
    learner.save_checkpoint()
    fresh, _ = make(tiny_model_dir, tmp_path / "run")
    fresh.resume()
    assert fresh.engine.lr == pytest.approx(5e-6)
