"""How an EngineConfig becomes the keyword arguments of `vllm.LLM` (no engine is started)."""

from __future__ import annotations

from pathlib import Path

from generator.config import EngineConfig
from generator.engine import llm_kwargs


def test_on_cpu_the_kv_cache_size_comes_from_the_config() -> None:
    kwargs = llm_kwargs(Path("/m"), EngineConfig(), "shm", cuda=False)
    assert kwargs["kv_cache_memory_bytes"] == 1 << 30  # 1 GiB unless configured otherwise
    half = llm_kwargs(Path("/m"), EngineConfig(cpu_kv_cache_gb=0.5), "shm", cuda=False)
    assert half["kv_cache_memory_bytes"] == 1 << 29
    given = EngineConfig(cpu_kv_cache_gb=0.5, args={"kv_cache_memory_bytes": 12345})
    assert llm_kwargs(Path("/m"), given, "shm", cuda=False)["kv_cache_memory_bytes"] == 12345


def test_cpu_defaults_and_gpu_defaults() -> None:
    cpu = llm_kwargs(Path("/m"), EngineConfig(max_model_len=64), "shm", cuda=False)
    assert (cpu["dtype"], cpu["enforce_eager"], cpu["enable_chunked_prefill"]) == ("float32", True, False)
    assert cpu["max_model_len"] == 64 and cpu["model"] == cpu["tokenizer"] == "/m"
    gpu = llm_kwargs(Path("/m"), EngineConfig(), "shm", cuda=True)
    assert (gpu["dtype"], gpu["enforce_eager"]) == ("auto", False)
    assert "kv_cache_memory_bytes" not in gpu and "enable_chunked_prefill" not in gpu
    assert "max_model_len" not in gpu
