"""Where each component of a node's run goes: GPUs, ranks, and an estimate of its memory.

    learner    GPUs 0 .. ranks-1        one rank per GPU (ZeRO shards across them)
    generator  the next tp GPUs each    vLLM claims gpu_memory_utilization of each
    judge      no GPU                   (CUDA_VISIBLE_DEVICES empty on a GPU node)

or, with `placement.colocate`, generators on the node's GPUs from the first again (one GPU: all
on it), each claiming its share of memory beside the learner's.

A plan that cannot fit is refused before anything starts, with the numbers. The learner's
memory per GPU is estimated from the model's shape (its config.json, or the recipe's
`placement.model` when planning for a node whose model is not here):

    model states  P x (weights b + grads b + fp32 master 4 if b < 4 + Adam 8), each part divided
                  by the ranks that ZeRO shards it over (1: optimizer; 2: + grads; 3: + weights),
                  optimizer (and, at ZeRO-3, weights) offloaded to the CPU count nothing
    activations   with checkpointing: every layer's input kept (T x H x b x L) plus one layer
                  recomputed (T x (16 H + 3 I) x b); without: T x (16 H + 3 I) x b x L
    log-probs     3 x chunk x V x 4 (logits of one chunk of tokens at a time, fp32)
    overhead      3 GB on a GPU (CUDA context, allocator slack)

with T the micro-batch's tokens, H hidden size, I the MLP's, L layers, V vocabulary, b bytes per
weight. It is an estimate to refuse what cannot work, not a promise that what passes fits.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from proto.config import Config, ConfigError

if TYPE_CHECKING:
    from launch.recipe import Recipe

GB = 1e9
OVERHEAD_GB = 3.0


class ModelShape(Config):
    """What the memory estimate needs of a model; read from its config.json when it is here."""

    parameters_b: float = Field(gt=0, description="parameters, in billions")
    hidden_size: int = Field(ge=1)
    intermediate_size: int = Field(ge=1)
    layers: int = Field(ge=1)
    vocab_size: int = Field(ge=1)


class PlacementConfig(Config):
    gpu_memory_gb: float | None = Field(
        default=None, gt=0, description="per GPU; None: measured on this node's GPU, else 80"
    )
    # Share GPUs between the learner and the generators (each generator then claims its share of
    # a GPU the learner uses too): for a node with fewer GPUs than components, e.g. one.
    colocate: bool = False
    model: ModelShape | None = Field(
        default=None,
        description="the model's shape, for planning where its directory is not (config.json wins)",
    )


class PlanError(ConfigError):
    """The recipe does not fit the node; the message gives the numbers."""


@dataclass
class Placed:
    """One component of the plan (plan.json's `components`; `command` is added by the caller)."""

    name: str
    kind: Literal["learner", "generator", "judge"]
    gpus: list[int]
    env: dict[str, str]
    memory_gb: float | None  # per GPU (on CPU: the process's); None where unknown
    ranks: int | None = None  # learner only
    weight_transfer: str | None = None  # generators only: "zmq" (chunks) or "broadcast" (collective)
    command: list[str] = field(default_factory=list)
    memory: dict[str, float] = field(default_factory=dict)  # the estimate's parts, GB

    def as_json(self) -> dict[str, Any]:
        out = asdict(self)
        if self.kind != "learner":
            del out["ranks"]
        if self.kind != "generator":
            del out["weight_transfer"]
        return out


@dataclass
class Plan:
    gpus: int
    gpu_memory_gb: float | None
    components: list[Placed]

    def as_json(self) -> dict[str, Any]:
        return {
            "gpus": self.gpus,
            "gpu_memory_gb": self.gpu_memory_gb,
            "components": [c.as_json() for c in self.components],
        }

    def write(self, path: Path) -> None:
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.as_json(), indent=1))
        tmp.replace(path)

    def rows(self) -> list[tuple[str, ...]]:
        """The plan as table rows: name, GPUs, CUDA_VISIBLE_DEVICES, ranks, memory, what it runs
        (the command up to its first option; plan.json has it whole)."""
        rows = []
        for c in self.components:
            gpus = ",".join(map(str, c.gpus)) if c.gpus else "-"
            memory = "-" if c.memory_gb is None else f"{c.memory_gb:.1f} GB"
            ranks = str(c.ranks) if c.ranks is not None else ""
            head = [Path(c.command[0]).name, *c.command[1:]] if c.command else []
            cut = next((i for i, arg in enumerate(head) if arg == "--config"), len(head))
            devices = c.env.get("CUDA_VISIBLE_DEVICES", "-") or "none"
            rows.append((c.name, gpus, devices, ranks, memory, " ".join(head[:cut])))
        return rows

    def memory_lines(self) -> list[str]:
        """Each estimate by its parts."""
        lines = []
        for c in self.components:
            if c.memory and c.memory_gb is not None:
                parts = " + ".join(f"{name} {gb:.1f}" for name, gb in c.memory.items())
                per = "per GPU" if c.gpus else "(CPU)"
                lines.append(f"{c.name} {per}: {parts} = {c.memory_gb:.1f} GB")
        return lines


def visible_gpus() -> list[str]:
    """The GPUs this process sees, as CUDA_VISIBLE_DEVICES names them (ids or UUIDs)."""
    try:
        import torch

        count = torch.cuda.device_count()
    except (ImportError, RuntimeError):
        return []
    named = os.environ.get("CUDA_VISIBLE_DEVICES")
    if named is not None:
        return [d.strip() for d in named.split(",") if d.strip()][:count]
    return [str(i) for i in range(count)]


def measured_gpu_memory_gb() -> float | None:
    try:
        import torch

        if torch.cuda.device_count() == 0:
            return None
        return torch.cuda.get_device_properties(0).total_memory / GB
    except (ImportError, RuntimeError):
        return None


def model_shape(model_dir: Path | None, fallback: ModelShape | None) -> ModelShape | None:
    """The shape from `model_dir/config.json` (parameters counted on the meta device), else `fallback`."""
    if model_dir is None or not (Path(model_dir) / "config.json").is_file():
        return fallback
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_dir)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    text = getattr(config, "text_config", config)
    return ModelShape(
        parameters_b=sum(p.numel() for p in model.parameters()) / 1e9,
        hidden_size=text.hidden_size,
        intermediate_size=getattr(text, "intermediate_size", 4 * text.hidden_size),
        layers=text.num_hidden_layers,
        vocab_size=text.vocab_size,
    )


def learner_memory(
    shape: ModelShape,
    *,
    weight_bytes: int,
    zero_stage: int,
    ranks: int,
    micro_batch_tokens: int,
    logits_chunk_tokens: int,
    gradient_checkpointing: bool,
    offload_optimizer: bool = False,
    offload_param: bool = False,
    overhead_gb: float = OVERHEAD_GB,
) -> dict[str, float]:
    """The estimate of one learner rank's memory, in GB, by part (see the module's docstring)."""
    p = shape.parameters_b * 1e9
    master = 4 if weight_bytes < 4 else 0
    shard = {
        "weights": ranks if zero_stage >= 3 else 1,
        "grads": ranks if zero_stage >= 2 else 1,
        "optimizer": ranks if zero_stage >= 1 else 1,
    }
    weights = 0.0 if offload_param and zero_stage >= 3 else p * weight_bytes / shard["weights"]
    grads = p * weight_bytes / shard["grads"]
    optimizer = 0.0 if offload_optimizer else p * (master + 8) / shard["optimizer"]
    t, h, i, n = micro_batch_tokens, shape.hidden_size, shape.intermediate_size, shape.layers
    one_layer = t * (16 * h + 3 * i) * weight_bytes
    activations = t * h * weight_bytes * n + one_layer if gradient_checkpointing else one_layer * n
    logits = 3 * min(logits_chunk_tokens, t) * shape.vocab_size * 4
    parts = {
        "weights": weights,
        "grads": grads,
        "optimizer": optimizer,
        "activations": activations,
        "logits": logits,
    }
    out = {name: round(value / GB, 2) for name, value in parts.items()}
    if overhead_gb:
        out["overhead"] = overhead_gb
    return out


def device_env(ids: list[str]) -> dict[str, str]:
    return {"CUDA_VISIBLE_DEVICES": ",".join(ids)}


def place(
    *,
    gpus: int,
    visible: list[str],
    gpu_memory_gb: float | None,
    shape: ModelShape | None,
    ranks: int,
    generators: int,
    tensor_parallel: int,
    generator_memory_share: float,
    learner_memory_parts: dict[str, float] | None,
    weight_bytes: int,
    colocate: bool = False,
) -> Plan:
    """The plan for a node of `gpus` GPUs (0: CPU only), or PlanError with the numbers.

    `visible` names the GPUs as this process sees them (CUDA_VISIBLE_DEVICES' names, so that a
    node already narrowed to some GPUs hands each component its share of those)."""
    components: list[Placed] = []
    judge_env = {"CUDA_VISIBLE_DEVICES": ""} if gpus else {}
    components.append(Placed("judge", "judge", [], judge_env, None))
    learner_gb = sum(learner_memory_parts.values()) if learner_memory_parts else None
    if gpus == 0:
        components.append(
            Placed("learner", "learner", [], {}, learner_gb, ranks=ranks, memory=learner_memory_parts or {})
        )
        components += [Placed(f"generator{g}", "generator", [], {}, None) for g in range(generators)]
        return Plan(0, None, components)
    names = visible[:gpus] if len(visible) >= gpus else [str(i) for i in range(gpus)]
    needed = ranks + generators * tensor_parallel
    if colocate and ranks > gpus:
        raise PlanError(f"learner.ranks {ranks}: one rank per GPU, and the node has {gpus}")
    if not colocate and needed > gpus:
        raise PlanError(
            f"the plan needs {needed} GPUs (learner.ranks {ranks} + generators {generators} x "
            f"tensor_parallel_size {tensor_parallel}) and the node has {gpus}: lower learner.ranks or "
            "generators, or run generators on other machines (generators=0 here), or share "
            "GPUs (placement.colocate=true)"
        )
    memory = gpu_memory_gb or 80.0
    problems = []
    if learner_gb is not None and learner_gb > memory:
        parts = ", ".join(f"{k} {v:.1f}" for k, v in (learner_memory_parts or {}).items())
        problems.append(
            f"learner: {learner_gb:.1f} GB per GPU ({parts}) > {memory:.1f} GB per GPU: raise learner.ranks "
            "or deepspeed.zero_stage, lower batching.micro_batch_tokens, turn on "
            "model.gradient_checkpointing, or offload the optimizer"
        )
    generator_gb = generator_memory_share * memory
    if shape is not None and generators:
        weights_gb = shape.parameters_b * 1e9 * weight_bytes / tensor_parallel / GB
        if weights_gb >= generator_gb:
            problems.append(
                f"generator: weights {weights_gb:.1f} GB per GPU (tensor_parallel_size "
                f"{tensor_parallel}) leave no KV cache in its share {generator_memory_share:g} x "
                f"{memory:.1f} = {generator_gb:.1f} GB: raise tensor_parallel_size or gpu_memory_utilization"
            )
    learner_ids = list(range(ranks))
    generator_ids = [
        [(ranks + g * tensor_parallel + i) % gpus for i in range(tensor_parallel)] for g in range(generators)
    ]
    if colocate and not problems:
        load = {gpu: [("learner", learner_gb or 0.0)] if gpu in learner_ids else [] for gpu in range(gpus)}
        for g, ids in enumerate(generator_ids):
            for gpu in ids:
                load[gpu].append((f"generator{g}", generator_gb))
        for gpu, parts in load.items():
            total = sum(gb for _, gb in parts)
            if total > memory:
                listed = " + ".join(f"{name} {gb:.1f}" for name, gb in parts)
                problems.append(f"GPU {gpu}: {listed} = {total:.1f} GB > {memory:.1f} GB")
    if problems:
        raise PlanError("the plan does not fit:\n  " + "\n  ".join(problems))
    components.append(
        Placed(
            "learner",
            "learner",
            learner_ids,
            device_env([names[i] for i in learner_ids]),
            learner_gb,
            ranks=ranks,
            memory=learner_memory_parts or {},
        )
    )
    for g, ids in enumerate(generator_ids):
        components.append(
            Placed(
                f"generator{g}", "generator", ids, device_env([names[i] for i in ids]), round(generator_gb, 2)
            )
        )
    return Plan(gpus, memory, components)


def plan_recipe(recipe: Recipe, gpus: int | None = None, *, evaluating: bool = False) -> Plan:
    """The recipe's plan for a node of `gpus` GPUs (None: the GPUs this process sees).
    `evaluating` (`acerl eval`): the learner's place holds an evaluation process, which trains
    nothing, so it gets no GPU and every GPU may go to generators."""
    visible = visible_gpus()
    if gpus is None:
        gpus = len(visible)
    learner = recipe.learner
    engine = recipe.generator.engine
    shape = model_shape(learner.model.path, recipe.placement.model)
    dtype = learner.model.dtype
    weight_bytes = 4 if dtype == "float32" or (dtype == "auto" and gpus == 0) else 2
    zero = learner.deepspeed.extra.get("zero_optimization", {})
    parts = None
    if shape is not None and not evaluating:
        parts = learner_memory(
            shape,
            weight_bytes=weight_bytes,
            zero_stage=learner.deepspeed.zero_stage,
            ranks=learner.ranks,
            micro_batch_tokens=learner.batching.micro_batch_tokens,
            logits_chunk_tokens=learner.batching.logits_chunk_tokens,
            gradient_checkpointing=learner.model.gradient_checkpointing,
            offload_optimizer=zero.get("offload_optimizer", {}).get("device", "none") != "none",
            offload_param=zero.get("offload_param", {}).get("device", "none") != "none",
            overhead_gb=OVERHEAD_GB if gpus else 0.0,  # a CUDA context's
        )
    elif gpus and shape is None:
        raise PlanError(
            f"learner.model.path: no config.json at {learner.model.path}, so the learner's memory cannot "
            "be estimated: fetch the model first (the tiny default: run once without --dry-run), or "
            "give its shape in placement.model"
        )
    plan = place(
        gpus=gpus,
        visible=visible,
        gpu_memory_gb=recipe.placement.gpu_memory_gb or (measured_gpu_memory_gb() if visible else None),
        shape=shape,
        ranks=0 if evaluating else learner.ranks,
        generators=recipe.generators,
        tensor_parallel=engine.tensor_parallel_size,
        generator_memory_share=engine.gpu_memory_utilization,
        learner_memory_parts=parts,
        weight_bytes=weight_bytes,
        colocate=recipe.placement.colocate,
    )
    for component in plan.components:
        if component.kind == "generator":
            component.weight_transfer = recipe.generator.weight_transfer
    return plan
