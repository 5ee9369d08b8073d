"""The generator's configuration: flags over YAML over defaults, and errors that name the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from generator.config import ConfigError, load_config


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    (tmp_path / "config.json").write_text("{}")
    return tmp_path


def base(model_dir: Path) -> list[str]:
    return ["--learner", "tcp://10.0.0.2:5000", "--judge", "ipc:///tmp/judge.ipc", "--model", str(model_dir)]


def test_flags_and_engine_args_are_typed(model_dir: Path) -> None:
    config = load_config(
        [
            *base(model_dir),
            "--credits", "32",
            "--generator-id", "007",
            "--max-model-len", "4096",
            "--engine-args", "tensor_parallel_size=2", "kv-cache-dtype=fp8", "enable_prefix_caching=false",
        ]
    )  # fmt: skip
    assert config.credits == 32
    assert config.generator_id == "007"
    assert config.engine.max_model_len == 4096
    assert config.engine.args == {
        "tensor_parallel_size": 2,
        "kv_cache_dtype": "fp8",
        "enable_prefix_caching": False,
    }
    assert config.learner == "tcp://10.0.0.2:5000"


def test_yaml_file_then_flags(model_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "generator.yaml"
    path.write_text("credits: 8\nheartbeat_s: 0.5\nengine:\n  seed: 3\n  args: {swap_space: 1}\n")
    config = load_config([*base(model_dir), "--config", str(path), "--credits", "4"])
    assert (config.credits, config.heartbeat_s, config.engine.seed) == (4, 0.5, 3)
    assert config.engine.args == {"swap_space": 1}


@pytest.mark.parametrize(
    ("flags", "field"),
    [
        (["--credits", "0"], "credits"),
        (["--heartbeat-s", "-1"], "heartbeat_s"),
        (["--weight-path", "nccl"], "weight_path"),
        (["--logprobs-mode", "raw_logits"], "engine.logprobs_mode"),
        (["--no-such-field-here"], None),
    ],
)
def test_bad_values_name_their_field(model_dir: Path, flags: list[str], field: str | None) -> None:
    if field is None:
        with pytest.raises(SystemExit):
            load_config([*base(model_dir), *flags])
        return
    with pytest.raises(ConfigError, match=rf"^{field}: "):
        load_config([*base(model_dir), *flags])


def test_addresses_and_model_are_checked(tmp_path: Path, model_dir: Path) -> None:
    with pytest.raises(ConfigError, match=r"learner: .*no scheme"):
        load_config(["--learner", "10.0.0.2:5000", "--judge", "ipc:///j", "--model", str(model_dir)])
    with pytest.raises(ConfigError, match=r"model: .*no config\.json"):
        load_config(["--learner", "tcp://127.0.0.1:1", "--judge", "ipc:///j", "--model", str(tmp_path / "x")])
    with pytest.raises(ConfigError, match="engine_args: expected KEY=VALUE"):
        load_config([*base(model_dir), "--engine-args", "novalue"])


def test_cli_exits_with_the_message(model_dir: Path) -> None:
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "generator", *base(model_dir), "--credits", "-2"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "credits: Input should be greater than or equal to 1" in done.stderr
