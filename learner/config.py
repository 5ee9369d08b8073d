"""The learner's typed configuration: defaults, then a YAML file, then dotted command-line overrides.

`load_config("run.yaml", ["grpo.kl_coef=0.01", "optim.lr=1e-6"])` returns a validated
`LearnerConfig`; any bad or unknown field raises `ConfigError` naming it (`grpo.kl_coef: ...`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(Section):
    path: Path | None = None  # a Hugging Face model directory (required to train)
    # auto: bfloat16 on a GPU, float32 on the CPU (the CPU kernels have no fast bf16 path)
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    gradient_checkpointing: bool = False
    attn_implementation: str | None = None  # None: the model's default (sdpa)


class OptimConfig(Section):
    lr: float = Field(default=1e-6, gt=0)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(default=1e-8, gt=0)
    weight_decay: float = Field(default=0.0, ge=0)
    warmup_steps: int = Field(default=0, ge=0)  # linear warm-up over this many optimizer steps
    grad_clip: float = Field(default=1.0, ge=0)  # max global grad norm; 0 disables clipping


class DeepSpeedConfig(Section):
    zero_stage: Literal[0, 1, 2, 3] = 0
    # Merged last into the generated DeepSpeed config: anything DeepSpeed accepts passes through.
    extra: dict[str, Any] = {}


class GRPOConfig(Section):
    adv_eps: float = Field(default=1e-6, gt=0)  # advantage = (r - mean) / (std + adv_eps)
    updates_per_batch: int = Field(default=1, ge=1)  # 1: strictly on-policy, ratio 1, clip inert
    clip_low: float = Field(default=0.2, ge=0, lt=1)
    clip_high: float = Field(default=0.2, ge=0)
    kl_coef: float = Field(default=0.0, ge=0)  # > 0 loads a frozen reference model
    ref_model_path: Path | None = None  # default: model.path
    entropy_coef: float = Field(default=0.0, ge=0)
    mask_truncated: bool = True  # overlong filtering: no gradient from completions cut at the limit
    drop_zero_variance: bool = True  # groups whose rewards are all equal carry no signal
    tis_cap: float | None = Field(default=None, gt=0)  # truncated importance sampling vs the sampler
    temperature: float = Field(default=1.0, gt=0)  # the sampler's; logits are divided by it


class BatchingConfig(Section):
    # Padded tokens (rows x longest row) per forward/backward; a longer sequence goes alone.
    micro_batch_tokens: int = Field(default=16384, ge=1)


class CheckpointConfig(Section):
    dir: Path | None = None  # default: <run_dir>/checkpoints
    every_steps: int = Field(default=0, ge=0)  # 0: only when asked
    keep_last: int = Field(default=3, ge=1)
    hf_model: bool = True  # also write the model in Hugging Face format


class PublishConfig(Section):
    address: str | None = None  # e.g. tcp://127.0.0.1:* ; None: do not serve weights
    chunk_bytes: int = Field(default=4 * 1024 * 1024, ge=1024, le=32 * 1024 * 1024)
    dtype: Literal["model", "float32", "bfloat16", "float16"] = "model"
    max_streams: int = Field(default=16, ge=1)  # concurrent transfers; more get Error(busy)
    send_timeout_s: float = Field(default=60.0, gt=0)
    secret_key: Path | None = None  # CURVE secret key file; required to bind off loopback
    clients_dir: Path | None = None  # public keys of the only generators let in


class MetricsConfig(Section):
    jsonl: bool = True
    tensorboard: bool = True


class LearnerConfig(Section):
    run_dir: Path = Path("runs/learner")
    seed: int = 0
    torch_threads: int | None = Field(default=None, ge=1)
    model: ModelConfig = ModelConfig()
    optim: OptimConfig = OptimConfig()
    deepspeed: DeepSpeedConfig = DeepSpeedConfig()
    grpo: GRPOConfig = GRPOConfig()
    batching: BatchingConfig = BatchingConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    publish: PublishConfig = PublishConfig()
    metrics: MetricsConfig = MetricsConfig()

    @property
    def checkpoint_dir(self) -> Path:
        return self.checkpoint.dir if self.checkpoint.dir is not None else self.run_dir / "checkpoints"


class ConfigError(ValueError):
    """A configuration that does not validate; the message names every bad field."""


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b.c=value` -> (["a", "b", "c"], value parsed as YAML)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r}: expected KEY=VALUE with a dotted key, e.g. grpo.kl_coef=0.01")
    path = key.strip().split(".")
    if any(not part for part in path):
        raise ConfigError(f"override {text!r}: empty part in key {key!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {key}: value {raw!r} is not valid YAML ({exc})") from None
    return path, value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for depth, part in enumerate(path[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                where = ".".join(path[: depth + 1])
                raise ConfigError(f"override {text!r}: {where} is a value, not a section")
            node = child
        node[path[-1]] = value
    return data


def format_errors(exc: ValidationError) -> str:
    lines = []
    for error in exc.errors(include_url=False):
        field = ".".join(str(part) for part in error["loc"]) or "(root)"
        got = f" (got {error['input']!r})" if error["type"] != "missing" and "input" in error else ""
        lines.append(f"{field}: {error['msg']}{got}"[:500])
    return "; ".join(lines)


Config = TypeVar("Config", bound=BaseModel)


def load_config(
    path: Path | str | None = None,
    overrides: list[str] | None = None,
    schema: type[Config] = LearnerConfig,  # type: ignore[assignment]
    base: dict[str, Any] | None = None,
) -> Config:
    """Defaults <- `base` <- YAML file at `path` <- dotted `overrides`, validated against `schema`."""
    data: dict[str, Any] = dict(base or {})
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text())
        except OSError as exc:
            raise ConfigError(f"config file {path}: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path}: not valid YAML ({exc})") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(
                f"config file {path}: expected a mapping at the top, got {type(loaded).__name__}"
            )
        data = _merge(data, loaded or {})
    apply_overrides(data, list(overrides or []))
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"invalid config: {format_errors(exc)}") from None


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def dump_config(config: BaseModel) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
