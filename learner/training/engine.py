"""The policy inside a DeepSpeed engine: per-token log-probs and entropy, backward, optimizer step.

The engine runs with `managed_gradient_accumulation: false`: every `backward` adds to the
gradients and `step` is the boundary, so one learner step may hold any number of micro-batches
(the token budget decides) and the update equals the one of the whole batch at once.
"""

from __future__ import annotations

import os
import socket
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import deepspeed
import structlog
import torch
from deepspeed.accelerator import get_accelerator
from torch import Tensor
from transformers import AutoModelForCausalLM, PreTrainedModel

from learner.config import LearnerConfig
from learner.training.batching import MicroBatch

log = structlog.get_logger("learner.engine")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ensure_distributed() -> None:
    """Initialise torch.distributed once per process. Outside a launcher this process is the
    only rank: its group then meets in memory, not on a TCP port that another process may take
    between choosing it and listening on it (seen as EADDRINUSE on a busy machine)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return
    backend = get_accelerator().communication_backend_name()
    if "RANK" not in os.environ:
        # for code that reads them; the group itself does not use the address
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1")
        os.environ["MASTER_PORT"] = str(_free_port())
        torch.distributed.init_process_group(
            backend=backend, store=torch.distributed.HashStore(), rank=0, world_size=1
        )
    deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False, verbose=False)


def world_size() -> int:
    return torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1


def rank() -> int:
    return torch.distributed.get_rank() if torch.distributed.is_initialized() else 0


def all_reduce_sum(value: Tensor) -> Tensor:
    if world_size() > 1:
        value = value.clone()
        torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.SUM)
    return value


def barrier() -> None:
    if world_size() > 1:
        torch.distributed.barrier()


def on_cpu() -> bool:
    return get_accelerator().device_name() == "cpu"


def training_dtype(cfg: LearnerConfig) -> torch.dtype:
    if cfg.model.dtype == "auto":
        return torch.float32 if on_cpu() else torch.bfloat16
    return getattr(torch, cfg.model.dtype)


def deepspeed_config(cfg: LearnerConfig) -> dict[str, Any]:
    """The DeepSpeed config generated from the learner's, with `deepspeed.extra` merged last."""
    generated: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": 1,
        "managed_gradient_accumulation": False,
        "gradient_clipping": cfg.optim.grad_clip,
        "optimizer": {
            "type": "AdamW",
            "params": {
                "lr": cfg.optim.lr,
                "betas": list(cfg.optim.betas),
                "eps": cfg.optim.eps,
                "weight_decay": cfg.optim.weight_decay,
                # DeepSpeed's fused Adam has no CPU kernel.
                "torch_adam": on_cpu(),
            },
        },
        "zero_optimization": {"stage": cfg.deepspeed.zero_stage},
        "bf16": {"enabled": training_dtype(cfg) == torch.bfloat16},
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }
    return _deep_merge(generated, cfg.deepspeed.extra)


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        out[key] = (
            _deep_merge(out[key], value)
            if isinstance(value, dict) and isinstance(out.get(key), dict)
            else value
        )
    return out


class LinearWarmup:
    """LR factor: (t + 1) / warmup_steps during warm-up, then 1. A callable object, so that the
    scheduler's state_dict (and with it the checkpoint) carries it."""

    def __init__(self, warmup_steps: int) -> None:
        self.warmup_steps = warmup_steps

    def __call__(self, step: int) -> float:
        return 1.0 if self.warmup_steps <= 0 else min(1.0, (step + 1) / self.warmup_steps)


def load_model(path: Path, cfg: LearnerConfig) -> PreTrainedModel:
    kwargs: dict[str, Any] = {"dtype": training_dtype(cfg)}
    if cfg.model.attn_implementation is not None:
        kwargs["attn_implementation"] = cfg.model.attn_implementation
    return AutoModelForCausalLM.from_pretrained(path, **kwargs)


def sequence_logprobs(
    model: Any, mb: MicroBatch, temperature: float, *, entropy_grad: bool = False
) -> tuple[Tensor, Tensor]:
    """Log-prob of each target token and the entropy of each kept position, both [B, K], float32,
    under the model's distribution at `temperature` (the sampler's)."""
    out = model(
        input_ids=mb.input_ids, attention_mask=mb.attention_mask, logits_to_keep=mb.keep, use_cache=False
    )
    logits = out.logits.float()
    if temperature != 1.0:
        logits = logits / temperature
    logsm = torch.log_softmax(logits, dim=-1)
    logp = logsm.gather(-1, mb.targets.unsqueeze(-1)).squeeze(-1)
    with nullcontext() if entropy_grad else torch.no_grad():
        probs_logsm = logsm if entropy_grad else logsm.detach()
        entropy = -(probs_logsm.exp() * probs_logsm).sum(-1)
    return logp, entropy


class PolicyEngine:
    """A Hugging Face causal LM loaded from a directory, trained by a DeepSpeed engine."""

    def __init__(self, cfg: LearnerConfig) -> None:
        if cfg.model.path is None:
            raise ValueError("model.path: required (a Hugging Face model directory)")
        ensure_distributed()
        self.cfg = cfg
        model = load_model(cfg.model.path, cfg)
        if cfg.model.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.pad_id = int(model.config.pad_token_id or 0)
        warmup = LinearWarmup(cfg.optim.warmup_steps)
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model,
            model_parameters=[p for p in model.parameters() if p.requires_grad],
            config=deepspeed_config(cfg),
            lr_scheduler=lambda optimizer: torch.optim.lr_scheduler.LambdaLR(optimizer, warmup),
        )
        self.device = self.engine.device
        self.reference: PreTrainedModel | None = None
        if cfg.grpo.kl_coef > 0:
            self.reference = load_model(cfg.grpo.ref_model_path or cfg.model.path, cfg).to(self.device).eval()
            self.reference.requires_grad_(False)
        log.info(
            "engine_ready",
            model=str(cfg.model.path),
            dtype=str(training_dtype(cfg)),
            zero_stage=cfg.deepspeed.zero_stage,
            device=str(self.device),
            parameters=sum(p.numel() for p in model.parameters()),
            reference=self.reference is not None,
        )

    @property
    def module(self) -> PreTrainedModel:
        return self.engine.module

    def logprobs(
        self, mb: MicroBatch, temperature: float, *, entropy_grad: bool = False
    ) -> tuple[Tensor, Tensor]:
        return sequence_logprobs(self.engine, mb, temperature, entropy_grad=entropy_grad)

    @torch.no_grad()
    def reference_logprobs(self, mb: MicroBatch, temperature: float) -> Tensor:
        if self.reference is None:
            raise RuntimeError("grpo.kl_coef: no reference model loaded (kl_coef is 0)")
        return sequence_logprobs(self.reference, mb, temperature)[0]

    def backward(self, loss: Tensor) -> None:
        self.engine.backward(loss, scale_wrt_gas=False)

    def step(self) -> float:
        """Apply the accumulated gradients; returns the global grad norm before clipping."""
        own_norm = None
        if not (self.engine.zero_optimization() or self.engine.bfloat16_enabled()):
            # Only ZeRO and mixed-precision optimizers report the norm; compute it for plain fp32.
            grads = [p.grad for p in self.module.parameters() if p.grad is not None]
            own_norm = float(
                torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
            )
        self.engine.step()
        reported = self.engine.get_global_grad_norm()
        norm = own_norm if reported is None else float(reported)
        return float("nan") if norm is None else norm

    def zero_grad(self) -> None:
        self.engine.zero_grad()

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def set_lr(self, lr: float) -> None:
        """A new base learning rate (a stage change); warm-up keeps applying to it."""
        self.scheduler.base_lrs = [lr for _ in self.scheduler.base_lrs]
        factor = self.scheduler.lr_lambdas[0](self.scheduler.last_epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * factor

    @property
    def optimizer_steps(self) -> int:
        return int(self.engine.global_steps)

    def save_state(self, directory: Path) -> None:
        """Model, optimizer and scheduler in DeepSpeed's format (every rank writes its shards)."""
        self.engine.save_checkpoint(str(directory), tag="engine", save_latest=False)

    def load_state(self, directory: Path) -> None:
        path, _ = self.engine.load_checkpoint(
            str(directory), tag="engine", load_optimizer_states=True, load_lr_scheduler_states=True
        )
        if path is None:
            raise FileNotFoundError(f"no DeepSpeed state under {directory}/engine")

    def full_state_dict(self) -> dict[str, Tensor]:
        if self.engine.zero_optimization_stage() == 3:
            return self.engine._zero3_consolidated_16bit_state_dict()
        return self.module.state_dict()

    def save_pretrained(self, directory: Path) -> None:
        """The model in Hugging Face format (rank 0 writes; every rank must call it under ZeRO-3)."""
        state = self.full_state_dict()
        if rank() == 0:
            self.module.save_pretrained(directory, state_dict=state)

    def named_weights(self, dtype: torch.dtype | None = None) -> dict[str, Tensor]:
        """A CPU copy of every parameter by its Hugging Face name (tied weights once)."""
        params = dict(self.module.named_parameters())
        gather = (
            deepspeed.zero.GatheredParameters(list(params.values()), modifier_rank=None)
            if self.engine.zero_optimization_stage() == 3
            else nullcontext()
        )
        with gather, torch.no_grad():
            return {
                name: p.detach().to("cpu", dtype=dtype or p.dtype, copy=True) for name, p in params.items()
            }
