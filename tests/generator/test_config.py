"""The generator's configuration: key=value overrides over YAML over defaults, and errors that
name the field (the same loader as every component: proto/config.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from generator.__main__ import load_config
from proto.config import ConfigError


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    (tmp_path / "config.json").write_text("{}")
    return tmp_path


def base(model_dir: Path) -> list[str]:
    return ["learner=tcp://10.0.0.2:5000", "judge=ipc:///tmp/judge.ipc", f"model={model_dir}"]


def test_overrides_and_engine_args_are_typed(model_dir: Path) -> None:
    config, level = load_config(
        [
            *base(model_dir),
            "credits=32",
            "generator_id=007",
            "engine.max_model_len=4096",
            "engine.tensor_parallel_size=2",
            "engine.args.kv_cache_dtype=fp8",
            "engine.args.enable_prefix_caching=false",
            "--log-level", "debug",
        ]
    )  # fmt: skip
    assert config.credits == 32
    assert config.generator_id == "007"  # a text field keeps its text
    assert config.engine.max_model_len == 4096
    assert config.engine.tensor_parallel_size == 2
    assert config.engine.args == {
        "kv_cache_dtype": "fp8",
        "enable_prefix_caching": False,
    }
    assert config.learner == "tcp://10.0.0.2:5000"
    assert level == "debug"


def test_what_the_plan_reads_is_refused_in_engine_args(model_dir: Path) -> None:
    with pytest.raises(ConfigError, match=r"tensor_parallel_size: set engine.tensor_parallel_size instead"):
        load_config([*base(model_dir), "engine.args.tensor_parallel_size=2"])


def test_yaml_file_then_overrides(model_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "generator.yaml"
    path.write_text("credits: 8\nheartbeat_s: 0.5\nengine:\n  seed: 3\n  args: {swap_space: 1}\n")
    config, _ = load_config([*base(model_dir), "--config", str(path), "credits=4"])
    assert (config.credits, config.heartbeat_s, config.engine.seed) == (4, 0.5, 3)
    assert config.engine.args == {"swap_space": 1}


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("credits=0", "credits: "),
        ("heartbeat_s=-1", "heartbeat_s: "),
        ("weight_path=nccl", "weight_path: "),
        ("engine.logprobs_mode=raw_logits", "engine.logprobs_mode: "),
        ("no_such_field_here=1", "no field 'no_such_field_here'"),
        ("engine.no_such=1", "no field 'no_such' in engine"),
    ],
)
def test_bad_values_name_their_field(model_dir: Path, override: str, field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        load_config([*base(model_dir), override])


def test_a_config_file_error_names_the_file_and_line(model_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "generator.yaml"
    path.write_text("credits: 8\nengine:\n  seed: 3\n  max_model_len: 2\n")
    with pytest.raises(ConfigError, match=r"generator\.yaml, line 4: engine\.max_model_len: "):
        load_config([*base(model_dir), "--config", str(path)])


def test_addresses_and_model_are_checked(tmp_path: Path, model_dir: Path) -> None:
    with pytest.raises(ConfigError, match=r"learner: .*no scheme"):
        load_config(["learner=10.0.0.2:5000", "judge=ipc:///j", f"model={model_dir}"])
    with pytest.raises(ConfigError, match=r"model: .*no config\.json"):
        load_config(["learner=tcp://127.0.0.1:1", "judge=ipc:///j", f"model={tmp_path / 'x'}"])
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        load_config([*base(model_dir), "novalue"])


def test_cli_exits_with_the_message(model_dir: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "generator", *base(model_dir), "credits=-2"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "credits: Input should be greater than or equal to 1" in done.stderr
