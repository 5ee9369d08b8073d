"""The generator's typed configuration, loaded like every component's (`proto.config.load`):
defaults, then `--config FILE.yaml`, then dotted `key=value` overrides.

    python -m generator learner=tcp://HOST:5555 judge=tcp://HOST:5556 model=/path/to/model \
        credits=32 engine.max_model_len=4096 engine.tensor_parallel_size=2

`GeneratorSettings` is what a recipe's `generator:` section holds; `GeneratorConfig` adds where
this generator finds the learner, the judge and the model (the supervisor fills those in).
`engine.args` go to `vllm.LLM(**args)` unchanged.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from proto.config import Config
from proto.sockets import is_loopback


def default_generator_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class EngineConfig(Config):
    """How the vLLM engine is started. `args` go to `vllm.LLM(**args)` as they are."""

    dtype: str = "auto"
    max_model_len: int | None = Field(default=None, ge=16)
    seed: int = 0
    # None: eager on CPU, CUDA graphs on GPU. False on CPU: torch.compile, which costs ~9 s of
    # start-up and samples faster (measured on 2 cores, 8 samples of 44 tokens
    # for each of 2 prompts: 25 % faster; for each of 16: 8 %); the tiny recipe turns it on.
    enforce_eager: bool | None = None
    # None: on CPU, in the generator's process (measured on 2 cores: a round of 16 prompts x 8
    # samples 11-19 % faster, start-up 23 -> 7 s); on GPU, vLLM's own engine process, whose
    # scheduling then overlaps the GPU's work.
    in_process: bool | None = Field(
        default=None, description="run vLLM's engine core and worker in the generator's process"
    )
    # processed: the log-probability under the distribution actually sampled from (after
    # temperature, top-k, top-p); raw: the model's own softmax, whatever the temperature.
    logprobs_mode: Literal["processed_logprobs", "raw_logprobs"] = "processed_logprobs"
    # The placement plan reads these two: a generator takes tensor_parallel_size GPUs of the node,
    # and claims this share of each.
    tensor_parallel_size: int = Field(default=1, ge=1, description="GPUs of one generator")
    gpu_memory_utilization: float = Field(
        default=0.9, gt=0, le=1, description="GPU only: the share of each of its GPUs vLLM claims"
    )
    cpu_kv_cache_gb: float = Field(
        default=1.0,
        gt=0,
        description="CPU only: vLLM's KV cache in GiB (vLLM's own default takes most of the memory). "
        "It wins over the environment variable VLLM_CPU_KVCACHE_SPACE, which is then ignored; "
        "args.kv_cache_memory_bytes wins over it",
    )
    args: dict[str, Any] = {}

    @field_validator("args")
    @classmethod
    def _args(cls, value: dict[str, Any]) -> dict[str, Any]:
        typed = sorted(set(value) & {"tensor_parallel_size", "gpu_memory_utilization"})
        if typed:
            raise ValueError(f"{', '.join(typed)}: set engine.{typed[0]} instead of engine.args")
        return value


class GeneratorSettings(Config):
    """A generator's settings, less where it connects to (a recipe's `generator:` section)."""

    generator_id: str = Field(default_factory=default_generator_id, min_length=1, max_length=256)
    credits: int = Field(default=16, ge=1, description="work items held at once")
    initial_version: int = Field(default=0, ge=0, description="policy version of the weights in `model`")
    weights: str | None = Field(
        default=None,
        description="weight publisher address as this machine reaches it (default: the announced one)",
    )
    weight_path: Literal["auto", "shm", "ipc"] = Field(
        default="auto", description="shm: worker extension reload (CPU); ipc: vLLM's CUDA IPC engine"
    )
    weight_transfer: Literal["zmq", "broadcast"] = Field(
        default="zmq",
        description="zmq: each version fetched in chunks (CURVE across networks); broadcast: one gloo "
        "broadcast to every generator that joined (the learner's publish.broadcast)",
    )
    broadcast_timeout_s: float = Field(default=60.0, gt=0, description="each collective call (then zmq)")
    warm_reload: bool = Field(
        default=True,
        description="reload the model's own weights once at start, as updates load (shm or ipc path): "
        "a path that cannot reload fails at start, and the first update is no slower than the next",
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
    engine: EngineConfig = EngineConfig()

    @field_validator("weights")
    @classmethod
    def _weights(cls, value: str | None) -> str | None:
        return value if value is None else _address(value)


class GeneratorConfig(GeneratorSettings):
    learner: str = Field(description="address of the learner's work dispatcher")
    judge: str = Field(description="address of the judge daemon")
    model: Path = Field(description="Hugging Face model directory the engine starts from")

    @field_validator("learner", "judge")
    @classmethod
    def _peer(cls, value: str) -> str:
        return _address(value)


def _address(value: str) -> str:
    is_loopback(value)  # raises ValueError naming the address when it is malformed
    return value
