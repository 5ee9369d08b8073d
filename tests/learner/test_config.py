"""Typed learner config: YAML, dotted overrides, and errors that name the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from learner.config import ConfigError, LearnerConfig, dump_config, load_config
from learner.engine import deepspeed_config


def test_defaults_follow_the_recipe() -> None:
    cfg = load_config()
    assert cfg.grpo.updates_per_batch == 1  # strictly on-policy
    assert cfg.grpo.kl_coef == 0 and cfg.grpo.entropy_coef == 0
    assert cfg.grpo.mask_truncated and cfg.grpo.drop_zero_variance
    assert cfg.grpo.tis_cap is None
    assert cfg.checkpoint_dir == Path("runs/learner/checkpoints")


def test_yaml_then_overrides(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("optim:\n  lr: 2.0e-6\ngrpo:\n  kl_coef: 0.1\n  clip_high: 0.28\n")
    cfg = load_config(
        path, ["grpo.kl_coef=0.0", "optim.lr=1e-6", "deepspeed.extra.zero_optimization.stage=2"]
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
        (["grpo.unknown=1"], "grpo.unknown"),
        (["batching.micro_batch_tokens=many"], "batching.micro_batch_tokens"),
        (["deepspeed.zero_stage=4"], "deepspeed.zero_stage"),
        (["seed.inner=1"], "seed"),
        (["optim.lr"], "optim.lr"),
    ],
)
def test_errors_name_the_field(overrides: list[str], named: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides)
    assert named in str(info.value)


def test_file_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"missing\.yaml"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "list.yaml"
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(bad)


def test_dump_round_trips(tmp_path: Path) -> None:
    cfg = load_config(None, ["model.path=/models/x", "grpo.tis_cap=2.0", "publish.address=tcp://127.0.0.1:*"])
    path = tmp_path / "resolved.yaml"
    path.write_text(dump_config(cfg))
    assert load_config(path) == cfg
    assert isinstance(load_config(path), LearnerConfig)
