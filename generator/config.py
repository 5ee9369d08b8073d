"""The generator's typed configuration: defaults, a YAML file, then command-line overrides.

`python -m generator --learner ADDR --judge ADDR --model PATH [--config FILE.yaml]
[--engine-args KEY=VALUE ...] [--credits N] ...`: every field below is also a flag
(`--heartbeat-s 2`); `--engine-args` passes extra keyword arguments to `vllm.LLM` unchanged.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from proto.sockets import is_loopback


def default_generator_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class EngineConfig(BaseModel):
    """How the vLLM engine is started. `args` go to `vllm.LLM(**args)` as they are."""

    model_config = ConfigDict(extra="forbid")

    dtype: str = "auto"
    max_model_len: int | None = Field(default=None, ge=16)
    seed: int = 0
    # None: eager on CPU (graph capture buys nothing there), CUDA graphs on GPU.
    enforce_eager: bool | None = None
    # processed: the log-probability under the distribution actually sampled from (after
    # temperature, top-k, top-p); raw: the model's own softmax, whatever the temperature.
    logprobs_mode: Literal["processed_logprobs", "raw_logprobs"] = "processed_logprobs"
    args: dict[str, Any] = {}


class GeneratorConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    learner: str = Field(description="address of the learner's work dispatcher")
    judge: str = Field(description="address of the judge daemon")
    model: Path = Field(description="Hugging Face model directory the engine starts from")
    generator_id: str = Field(default_factory=default_generator_id, min_length=1, max_length=256)
    credits: int = Field(default=16, ge=1, description="work items held at once")
    initial_version: int = Field(default=0, ge=0, description="policy version of the weights in --model")
    weights: str | None = Field(
        default=None,
        description="weight publisher address as this machine reaches it (default: the announced one)",
    )
    weight_path: Literal["auto", "shm", "ipc"] = Field(
        default="auto", description="shm: worker extension reload (CPU); ipc: vLLM's CUDA IPC engine"
    )
    warm_reload: bool = Field(
        default=True,
        description="reload the model's own weights once at start, as updates load (shm path): "
        "the first update is then no slower than the next",
    )
    heartbeat_s: float = Field(default=2.0, gt=0)
    learner_timeout_s: float = Field(default=10.0, gt=0, description="silence before reconnecting")
    resend_s: float = Field(default=2.0, gt=0, description="resend a rollout not acknowledged in this time")
    judge_timeout_s: float = Field(default=120.0, gt=0, description="per judge attempt")
    judge_retries: int = Field(default=2, ge=0)
    weight_timeout_s: float = Field(default=600.0, gt=0, description="whole fetch of one version")
    weight_load_step_mb: float = Field(
        default=8.0,
        ge=0,
        description="load a version still arriving in steps of at least this many MiB (0: only once whole)",
    )
    shutdown_grace_s: float = Field(default=10.0, ge=0, description="time to finish held work on SIGTERM")
    learner_key: Path | None = Field(default=None, description="learner's CURVE public key file")
    judge_key: Path | None = Field(default=None, description="judge's CURVE public key file")
    weights_key: Path | None = Field(default=None, description="publisher's key (default: learner_key)")
    client_key: Path | None = Field(default=None, description="this generator's CURVE secret key file")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    engine: EngineConfig = EngineConfig()

    @field_validator("learner", "judge", "weights")
    @classmethod
    def _address(cls, value: str | None) -> str | None:
        if value is not None:
            is_loopback(value)  # raises ValueError naming the address when it is malformed
        return value

    @field_validator("model")
    @classmethod
    def _model_dir(cls, value: Path) -> Path:
        if not (value / "config.json").is_file():
            raise ValueError(f"{value} is not a model directory (no config.json)")
        return value


class ConfigError(ValueError):
    pass


def _error_text(exc: ValidationError) -> str:
    lines = []
    for error in exc.errors(include_url=False):
        field = ".".join(str(part) for part in error["loc"]) or "config"
        lines.append(f"{field}: {error['msg']}")
    return "; ".join(lines)


def _parse_engine_args(pairs: list[str]) -> dict[str, Any]:
    args: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"engine_args: expected KEY=VALUE, got {pair!r}")
        args[key.strip().replace("-", "_")] = yaml.safe_load(value) if value else ""
    return args


_VERBATIM = {"learner", "judge", "weights", "generator_id", "model", "learner_key", "judge_key"}
_VERBATIM |= {"weights_key", "client_key"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m generator", description="vLLM rollout worker")
    parser.add_argument("--config", type=Path, help="YAML file with any of the fields below")
    for name, field in GeneratorConfig.model_fields.items():
        if name == "engine":
            continue
        flag = "--" + name.replace("_", "-")
        parser.add_argument(flag, dest=name, default=None, help=field.description)
    parser.add_argument("--dtype", dest="engine.dtype")
    parser.add_argument("--max-model-len", dest="engine.max_model_len")
    parser.add_argument("--seed", dest="engine.seed")
    parser.add_argument("--enforce-eager", dest="engine.enforce_eager")
    parser.add_argument("--logprobs-mode", dest="engine.logprobs_mode")
    parser.add_argument(
        "--engine-args", nargs="*", default=[], metavar="KEY=VALUE", help="extra vllm.LLM keyword arguments"
    )
    return parser


def load_config(argv: list[str] | None = None) -> GeneratorConfig:
    """Defaults, then the YAML file, then flags. Raises ConfigError naming the bad field."""
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    data: dict[str, Any] = {}
    if args.config is not None:
        try:
            loaded = yaml.safe_load(args.config.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"config: cannot read {args.config}: {exc}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"config: {args.config} must hold a mapping of fields")
        data.update(loaded)
    engine = dict(data.get("engine") or {})
    for key, value in vars(args).items():
        if value is None or key in ("config", "engine_args"):
            continue
        if key.startswith("engine."):
            engine[key.removeprefix("engine.")] = yaml.safe_load(value)
        elif key in _VERBATIM:
            data[key] = value  # addresses, paths and names as given, never read as YAML
        else:
            data[key] = yaml.safe_load(value)
    if args.engine_args:
        engine["args"] = {**engine.get("args", {}), **_parse_engine_args(args.engine_args)}
    if engine:
        data["engine"] = engine
    try:
        return GeneratorConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_error_text(exc)) from None
