"""Loading a fetched WeightSet into the running vLLM engine, in place, without a restart.

Two paths behind one object (`EngineLoader(llm, path)`):
- "shm": a worker extension maps the shared-memory file of the WeightSet and hands the tensors
  to vLLM's layerwise in-place reload (the tensors never travel to the workers, only the file
  name and the layout do, over a socket of each worker's own: see generator.reload_channel).
  Works on CPU and GPU workers. `EngineLoader.step` runs the same reload in steps, so that
  tensors can be loaded while the rest of the version still arrives.
- "ipc": on CUDA, vLLM's own weight-transfer engine (backend "ipc"): this process copies the
  tensors to the GPU and the workers rebuild them from CUDA IPC handles, in packed buffers.
"""

from __future__ import annotations

import base64
import contextlib
import math
import mmap
import os
import pickle
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from generator.reload_channel import ReloadChannel, ReloadService
from generator.weight_set import TensorEntry, WeightSet
from proto.weights import DTYPES, torch_dtype

WeightPath = Literal["shm", "ipc"]
Layout = list[tuple[str, str, list[int], int]]  # (name, dtype, shape, offset in the file) per tensor
EXTENSION_CLS = "generator.weight_loader.WeightReloadExtension"


class WeightReloadExtension:
    """Mixed into vLLM's worker class (`worker_extension_cls`); runs inside the engine's workers."""

    def acerl_reload(
        self,
        path: str | None,
        layout: Layout,
        begin: bool,
        end: bool,
    ) -> dict[str, float]:
        """One step of an in-place reload: the tensors laid out in file `path`.

        `begin` starts a reload and `end` finishes it; steps in between add tensors as they
        arrive. This is vLLM's own layerwise reload split across calls: a layer is rebuilt once
        all of its weights are in, so between `begin` and `end` the model is part old, part new,
        and the engine must not run it. Ending early leaves the layers still missing weights
        half-built: only a complete reload makes the model whole again.
        """
        from vllm.config import set_current_vllm_config
        from vllm.model_executor.model_loader.reload.layerwise import initialize_layerwise_reload

        started = time.perf_counter()
        model = self.model_runner.get_model()  # type: ignore[attr-defined]
        timings: dict[str, float] = {}
        with set_current_vllm_config(self.vllm_config):  # type: ignore[attr-defined]
            if begin:
                if getattr(self, "_acerl_reload", None) is not None:
                    self._acerl_finish()
                self._acerl_reload = _Reload(tied=_tied_parameters(model))
                initialize_layerwise_reload(model)
            reload: _Reload | None = getattr(self, "_acerl_reload", None)
            if reload is None:
                raise RuntimeError("acerl_reload: no reload in progress (call with begin=True first)")
            if not hasattr(self, "_acerl_files"):
                self._acerl_files = _MappedFiles()
            if layout:
                assert path is not None
                tensors = list(_tensors(self._acerl_files.get(path, layout, begin), layout))
                mapped_at = time.perf_counter()
                timings["map_s"] = mapped_at - started
                model.load_weights(iter(tensors))
                del tensors
                timings["load_s"] = time.perf_counter() - mapped_at
            if end:
                finishing = time.perf_counter()
                self._acerl_finish()
                timings["finish_s"] = time.perf_counter() - finishing
        return timings

    def _acerl_finish(self) -> None:
        from vllm.model_executor.model_loader.reload.layerwise import finalize_layerwise_reload

        reload: _Reload = self._acerl_reload
        self._acerl_reload: _Reload | None = None
        runner = self.model_runner  # type: ignore[attr-defined]
        finalize_layerwise_reload(runner.get_model(), self.vllm_config.model_config)  # type: ignore[attr-defined]
        _refresh_tied(reload.tied)
        for reset in ("reset_lora_state", "reset_encoder_cache", "reset_mm_cache"):
            if hasattr(runner, reset):  # what vLLM's own reload_weights clears afterwards
                getattr(runner, reset)()
        self._acerl_files.release_retired()

    def acerl_open_reload_service(self) -> str:
        """Serve `acerl_reload` steps on a socket of this worker's own; its address."""
        if getattr(self, "_acerl_service", None) is None:
            self._acerl_service = ReloadService(self.acerl_reload)
        return self._acerl_service.address

    def acerl_remember_ties(self) -> int:
        """Before a reload that does not go through `acerl_reload` (the IPC path)."""
        self._acerl_tied = _tied_parameters(self.model_runner.get_model())  # type: ignore[attr-defined]
        return len(self._acerl_tied)

    def acerl_restore_ties(self) -> int:
        from vllm.config import set_current_vllm_config

        tied = getattr(self, "_acerl_tied", [])
        with set_current_vllm_config(self.vllm_config):  # type: ignore[attr-defined]
            _refresh_tied(tied)
        self._acerl_tied: Tied = []
        return len(tied)


Tied = list[tuple[torch.nn.Parameter, list[tuple[torch.nn.Module, str]]]]


@dataclass
class _Reload:
    """A reload in progress inside a worker: the ties to restore once it ends."""

    tied: Tied


class _MappedFiles:
    """The weight files a worker has mapped, kept from one reload to the next.

    The generator writes each version into the file of the previous one; mapping it again would
    fault its pages in anew (0.02-0.04 s for 362 MiB here). Shared and only ever read: the
    tensors handed to vLLM's loaders are copied out of it.
    """

    def __init__(self) -> None:
        self._maps: dict[tuple[int, int], mmap.mmap] = {}  # (device, inode) -> mapping
        self._retired: list[mmap.mmap] = []  # replaced during a reload: views may still point in

    def get(self, path: str, layout: Layout, begin: bool) -> mmap.mmap:
        stat = os.stat(path)
        key = (stat.st_dev, stat.st_ino)
        if begin:  # a file no longer written to: let its pages go
            for other in [k for k in self._maps if k != key]:
                self._retired.append(self._maps.pop(other))
            self.release_retired()
        needed = max(offset + math.prod(shape) * DTYPES[dtype].itemsize for _, dtype, shape, offset in layout)
        mapped = self._maps.get(key)
        if mapped is None or len(mapped) < needed:  # new, or grown since it was mapped
            if mapped is not None:
                self._retired.append(mapped)
            with open(path, "r+b") as handle:
                mapped = self._maps[key] = mmap.mmap(handle.fileno(), 0, flags=mmap.MAP_SHARED)
        return mapped

    def release_retired(self) -> None:
        for mapped in self._retired:
            with contextlib.suppress(BufferError):  # a view still alive: the GC unmaps it later
                mapped.close()
        self._retired.clear()


def _tensors(mapped: mmap.mmap, layout: Layout) -> Iterator[tuple[str, torch.Tensor]]:
    for name, dtype, shape, offset in layout:
        count = math.prod(shape)
        if count == 0:
            yield name, torch.empty(shape, dtype=torch_dtype(dtype))
            continue
        flat = torch.frombuffer(mapped, dtype=torch_dtype(dtype), count=count, offset=offset)
        yield name, flat.view(shape)


def _tied_parameters(model: torch.nn.Module) -> Tied:
    """Parameters shared by several modules (tied input and output embeddings, for one)."""
    owners: dict[int, tuple[torch.nn.Parameter, list[tuple[torch.nn.Module, str]]]] = {}
    for module in model.modules():
        for attr, param in module._parameters.items():
            if param is not None:
                owners.setdefault(id(param), (param, []))[1].append((module, attr))
    return [(param, places) for param, places in owners.values() if len(places) > 1]


def _refresh_tied(tied: Tied) -> None:
    """Bring every module of a tied parameter up to date with the reloaded values.

    vLLM's layerwise reload processes a module only when its own weights arrive; the tied
    lm_head receives none ("Failed to load weights"), so whatever its quant method derived from
    the old values at start-up (on CPU, a packed GEMM copy of the embedding) would stay stale.
    If the reload swapped the parameter object, the modules share the new one again first.
    """
    for original, places in tied:
        current = [getattr(module, attr) for module, attr in places]
        fresh = next((param for param in current if param is not original), original)
        for module, attr in places:
            if getattr(module, attr) is not fresh:
                setattr(module, attr, fresh)
            quant_method = getattr(module, "quant_method", None)
            if quant_method is not None and hasattr(quant_method, "process_weights_after_loading"):
                quant_method.process_weights_after_loading(module)


def resolve_path(requested: Literal["auto", "shm", "ipc"]) -> WeightPath:
    if requested == "auto":
        return "ipc" if torch.cuda.is_available() else "shm"
    if requested == "ipc" and not torch.cuda.is_available():
        raise ValueError("weight_path: 'ipc' needs a CUDA device; use 'shm' or 'auto'")
    return requested


def engine_kwargs(path: WeightPath) -> dict[str, Any]:
    """What `vllm.LLM` needs for the chosen path."""
    kwargs: dict[str, Any] = {"worker_extension_cls": EXTENSION_CLS}
    if path == "ipc":
        kwargs["weight_transfer_config"] = {"backend": "ipc"}
        # IPC handles hold torch types that vLLM's RPC encoder only carries pickled; the
        # engine's processes are this generator's own children.
        os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")
    return kwargs


class EngineLoader:
    """Loads versions into the running engine of a `vllm.LLM`, whole, or in steps ("shm" path)."""

    def __init__(self, llm: Any, path: WeightPath) -> None:
        self.llm = llm
        self.path = path
        self._channel: ReloadChannel | None = None
        if path == "shm":
            addresses = llm.collective_rpc("acerl_open_reload_service")
            self._channel = ReloadChannel(addresses, alive=self._engine_alive)

    def _engine_alive(self) -> bool:
        resources = getattr(self.llm.llm_engine.engine_core, "resources", None)
        return not getattr(resources, "engine_dead", False)

    def whole(self, weight_set: WeightSet) -> dict[str, float]:
        """Load `weight_set` in place; seconds by part."""
        if self._channel is not None:
            return self.step(weight_set.path, weight_set.entries, begin=True, end=True)
        started = time.perf_counter()
        _load_over_ipc(self.llm, weight_set)
        return {"ipc_s": time.perf_counter() - started}

    def step(
        self, path: Path | None, entries: Sequence[TensorEntry], *, begin: bool, end: bool
    ) -> dict[str, float]:
        """One step of a "shm" reload (see `WeightReloadExtension.acerl_reload`); seconds by part."""
        if self._channel is None:
            raise RuntimeError(f"weight path {self.path!r} loads whole versions only")
        layout = [(e.name, e.dtype, list(e.shape), e.offset) for e in entries]
        return self._channel.step(None if path is None else str(path), layout, begin, end)

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()


class _EngineSyncClient:
    """vLLM's `VLLMWeightSyncClient` protocol over an in-process `vllm.LLM`."""

    def __init__(self, llm: Any) -> None:
        self.llm = llm

    def init_weight_transfer_engine(self, init_info: dict[str, Any]) -> None:
        self.llm.collective_rpc("init_weight_transfer_engine", kwargs={"init_info": init_info})

    def start_weight_update(self) -> None:
        self.llm.collective_rpc("start_weight_update")

    def update_weights(self, update_info: dict[str, Any] | list[dict[str, Any]]) -> None:
        infos = update_info if isinstance(update_info, list) else [update_info]
        for info in infos:
            if info.get("ipc_handles") is not None:
                handles = info.pop("ipc_handles")
                info["ipc_handles_pickled"] = base64.b64encode(pickle.dumps(handles)).decode()
        self.llm.collective_rpc("update_weights", kwargs={"update_info": update_info})

    def finish_weight_update(self, weight_version: str | None = None) -> None:
        self.llm.collective_rpc("finish_weight_update")


def _load_over_ipc(llm: Any, weight_set: WeightSet) -> None:
    from vllm.distributed.weight_transfer.base import ParamMeta, WeightSource
    from vllm.distributed.weight_transfer.ipc_engine import (
        IPCTrainerInitInfo,
        IPCTrainerWeightTransferEngine,
    )

    device = torch.device("cuda", torch.cuda.current_device())

    class _Source(WeightSource):
        def metadata(self) -> list[ParamMeta]:
            return [ParamMeta(e.name, torch_dtype(e.dtype), tuple(e.shape)) for e in weight_set.entries]

        def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]:
            for name, tensor in weight_set.tensors():
                yield name, tensor.to(device)  # type: ignore[union-attr]

    engine = IPCTrainerWeightTransferEngine.trainer_init(
        IPCTrainerInitInfo(rank=0, packed=True), client=_EngineSyncClient(llm), source=_Source()
    )
    llm.collective_rpc("acerl_remember_ties")
    engine.send_weights()
    llm.collective_rpc("acerl_restore_ties")
    engine.shutdown()
