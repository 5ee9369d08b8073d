"""The learner's schema: recipe defaults, sections that pass through to DeepSpeed, and the run's
additions. How files and overrides are read is tested with the loader (tests/proto/test_config.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from learner.config import LearnerConfig, RunConfig
from learner.training.engine import deepspeed_config
from proto.config import ConfigError, dump, load, replace


def test_defaults_follow_the_recipe() -> None:
    cfg = load(LearnerConfig)
    assert cfg.grpo.updates_per_batch == 1  # strictly on-policy
    assert cfg.grpo.kl_coef == 0 and cfg.grpo.entropy_coef == 0
    assert cfg.grpo.mask_truncated and cfg.grpo.drop_zero_variance
    assert cfg.grpo.tis_cap is None
    assert cfg.checkpoint_dir == Path("runs/learner/checkpoints")


def test_yaml_then_overrides(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("optim:\n  lr: 2.0e-6\ngrpo:\n  kl_coef: 0.1\n  clip_high: 0.28\n")
    cfg = load(
        LearnerConfig,
        path,
        ["grpo.kl_coef=0.0", "optim.lr=1e-6", "deepspeed.extra.zero_optimization.stage=2"],
    )
    assert cfg.optim.lr == 1e-6  # "1e-6" is a string to YAML 1.1; the typed field converts it
    assert cfg.grpo.kl_coef == 0.0
    assert cfg.grpo.clip_high == 0.28  # untouched by the overrides
    assert deepspeed_config(cfg)["zero_optimization"]["stage"] == 2  # passthrough wins


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        (["grpo.clip_low=-0.1"], "grpo.clip_low"),
        (["grpo.tis_cap=0"], "grpo.tis_cap"),
        (["grpo.unknown=1"], "no field 'unknown' in grpo"),
        (["batching.micro_batch_tokens=many"], "batching.micro_batch_tokens"),
        (["deepspeed.zero_stage=4"], "deepspeed.zero_stage"),
        (["seed.inner=1"], "seed"),
        (["optim.lr"], "optim.lr"),
    ],
)
def test_errors_name_the_field(overrides: list[str], named: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(LearnerConfig, None, overrides)
    assert named in str(info.value)


def test_a_run_needs_a_schedule_and_names_its_fields(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="schedule"):
        load(RunConfig)
    path = tmp_path / "run.yaml"
    stage = "{name: a, kind: math, prompts: p.jsonl, steps: 1, max_response_tokens: 8, batch_prompts: 2, n: 2"
    path.write_text(f"schedule:\n  stages:\n    - {stage}, learning_rate: 1.0e-6}}\n")
    cfg = load(RunConfig, path, ["schedule.stages.0.steps=3", "dispatch.address=tcp://127.0.0.1:*"])
    assert cfg.schedule.stages[0].steps == 3 and cfg.dispatch.address == "tcp://127.0.0.1:*"
    with pytest.raises(ConfigError, match=r"^override schedule\.stages\.0\.learning_rate=0: "):
        load(RunConfig, path, ["schedule.stages.0.learning_rate=0"])


def test_sections_are_frozen_and_replace_validates() -> None:
    cfg = load(LearnerConfig)
    with pytest.raises(ValueError, match="frozen"):
        cfg.grpo.mask_truncated = False  # type: ignore[misc]
    moved = replace(cfg, model=replace(cfg.model, path=Path("/models/x")))
    assert moved.model.path == Path("/models/x") and cfg.model.path is None
    with pytest.raises(ConfigError, match=r"batching\.micro_batch_tokens"):
        replace(cfg, batching={"micro_batch_tokens": 0})


def test_dump_round_trips(tmp_path: Path) -> None:
    cfg = load(
        LearnerConfig, None, ["model.path=/models/x", "grpo.tis_cap=2.0", "publish.address=tcp://127.0.0.1:*"]
    )
    path = tmp_path / "resolved.yaml"
    path.write_text(dump(cfg))
    assert load(LearnerConfig, path) == cfg
