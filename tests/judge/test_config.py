"""Configuration: YAML plus overrides, rejected with the dotted name of the bad field."""

from __future__ import annotations

from pathlib import Path

import pytest

from judge.config import JudgeConfig
from judge.sandbox import resolve_limits
from proto.config import ConfigError, load


def test_yaml_and_overrides(tmp_path: Path) -> None:
    path = tmp_path / "judge.yaml"
    path.write_text("workers: 3\nsandbox:\n  limits:\n    time_limit_s: 2.5\n")
    config = load(JudgeConfig, path, ["sandbox.limits.memory_limit_mb=512"])
    assert config.workers == 3
    assert config.sandbox.limits.time_limit_s == 2.5
    assert config.sandbox.limits.memory_limit_mb == 512
    assert config.sandbox.uid == 65534 and config.sandbox.unsafe_no_sandbox is False


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("workers=0", "workers"),
        ("sandbox.limits.time_limit_s=-1", "sandbox.limits.time_limit_s"),
        ("sandbox.limits.time_limit_s=100", "time_limit_s: larger than max_time_limit_s"),
        ("sandbox.uid=0", "sandbox.uid"),
        ("sandbox.no_such_thing=1", "no field 'no_such_thing' in sandbox"),
    ],
)
def test_bad_values_name_their_field(override: str, field: str) -> None:
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load(JudgeConfig, None, [override])


def test_override_syntax_is_checked() -> None:
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        load(JudgeConfig, None, ["workers"])


def test_request_overrides_are_capped() -> None:
    limits = JudgeConfig().sandbox.limits
    resolved = resolve_limits(limits, 0.5, 256)
    assert not isinstance(resolved, str)
    assert (resolved.cpu_s, resolved.memory_mb) == (0.5, 256)
    assert resolved.wall_s == 0.5 * limits.wall_ratio + limits.wall_extra_s
    assert resolve_limits(limits, 1000.0, None) == "time_limit_s: 1000.0 exceeds this judge's maximum of 60.0"
