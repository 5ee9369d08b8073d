"""The learner asks DeepSpeed for its fused Adam only where that op loads (prebuilt, or JIT-built
with nvcc), for torch's AdamW elsewhere, and its start-up log names the one built."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import deepspeed.git_version_info
import deepspeed.ops.op_builder.builder
import pytest
import structlog
import torch

from learner.config import LearnerConfig
from learner.training import engine
from learner.training.engine import PolicyEngine, deepspeed_config, fused_adam_available, optimizer_name


class FakeBuilder:
    name = "fused_adam"

    def __init__(self, *, compatible: bool = True, load_error: Exception | None = None) -> None:
        self.compatible, self.load_error, self.loads = compatible, load_error, 0

    def is_compatible(self, verbose: bool = False) -> bool:
        return self.compatible

    def load(self, verbose: bool = False) -> object:
        self.loads += 1
        if self.load_error is not None:
            raise self.load_error
        return object()


class FakeCudaAccelerator:
    _name = "cuda"

    def __init__(self, builder: FakeBuilder) -> None:
        self.builder = builder

    def device_name(self) -> str:
        return "cuda"

    def create_op_builder(self, name: str) -> FakeBuilder:
        assert name == "FusedAdamBuilder"
        return self.builder


@pytest.fixture(autouse=True)
def fresh_choice() -> Iterator[None]:
    fused_adam_available.cache_clear()
    yield
    fused_adam_available.cache_clear()


def on_gpu(monkeypatch: pytest.MonkeyPatch, builder: FakeBuilder, *, nvcc: bool, prebuilt: bool) -> None:
    monkeypatch.setattr(engine, "get_accelerator", lambda: FakeCudaAccelerator(builder))

    def installed_cuda_version(name: str = "") -> tuple[int, int]:
        if not nvcc:
            raise deepspeed.ops.op_builder.builder.MissingCUDAException("CUDA_HOME does not exist")
        return 12, 8

    monkeypatch.setattr(deepspeed.ops.op_builder.builder, "installed_cuda_version", installed_cuda_version)
    monkeypatch.setitem(deepspeed.git_version_info.installed_ops, "fused_adam", prebuilt)
    monkeypatch.setattr(deepspeed.git_version_info, "accelerator_name", "cuda")


@pytest.mark.parametrize(
    ("compatible", "nvcc", "prebuilt", "load_error", "fused", "loads"),
    [
        (True, False, False, None, False, 0),  # a GPU machine without the CUDA toolkit: no build tried
        (True, True, False, None, True, 1),  # JIT-built with nvcc
        (True, False, True, None, True, 1),  # prebuilt into the installed package
        (False, True, True, None, False, 0),  # the builder rules itself out
        (True, True, False, RuntimeError("nvcc failed"), False, 1),  # the build itself fails
    ],
)
def test_fused_adam_only_where_its_op_loads(
    monkeypatch: pytest.MonkeyPatch,
    compatible: bool,
    nvcc: bool,
    prebuilt: bool,
    load_error: Exception | None,
    fused: bool,
    loads: int,
) -> None:
    builder = FakeBuilder(compatible=compatible, load_error=load_error)
    on_gpu(monkeypatch, builder, nvcc=nvcc, prebuilt=prebuilt)
    assert fused_adam_available() is fused
    assert builder.loads == loads
    assert deepspeed_config(LearnerConfig())["optimizer"]["params"]["torch_adam"] is not fused


def test_the_cpu_takes_torch_adamw() -> None:
    assert engine.on_cpu()
    assert fused_adam_available() is False
    assert deepspeed_config(LearnerConfig())["optimizer"]["params"]["torch_adam"] is True


def test_deepspeed_extra_still_decides(monkeypatch: pytest.MonkeyPatch) -> None:
    on_gpu(monkeypatch, FakeBuilder(), nvcc=False, prebuilt=False)
    cfg = LearnerConfig.model_validate(
        {"deepspeed": {"extra": {"optimizer": {"params": {"torch_adam": False}}}}}
    )
    assert deepspeed_config(cfg)["optimizer"]["params"]["torch_adam"] is False


def test_optimizer_names() -> None:
    param = torch.nn.Parameter(torch.zeros(2))
    assert optimizer_name(torch.optim.AdamW([param])) == "torch AdamW"
    fused = type("FusedAdam", (torch.optim.SGD,), {"__module__": "deepspeed.ops.adam.fused_adam"})
    assert optimizer_name(fused([param], lr=0.1)) == "DeepSpeed FusedAdam"


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_engine_ready_names_the_optimizer(tiny_model_dir: Path, tmp_path: Path) -> None:
    cfg = LearnerConfig.model_validate({"run_dir": tmp_path, "model": {"path": tiny_model_dir}})
    with structlog.testing.capture_logs() as logs:
        PolicyEngine(cfg)
    ready = [e for e in logs if e["event"] == "engine_ready"]
    assert [e["optimizer"] for e in ready] == ["torch AdamW"]
