"""The policy inside a DeepSpeed engine: per-token log-probs and entropy, backward, optimizer step.

The engine runs with `managed_gradient_accumulation: false`: every `backward` adds to the
gradients and `step` is the boundary, so one learner step may hold any number of micro-batches
(the token budget decides) and the update equals the one of the whole batch at once.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import deepspeed
import structlog
import torch
from deepspeed.accelerator import get_accelerator
from torch import Tensor, nn
from torch.autograd.function import FunctionCtx
from torch.utils.checkpoint import checkpoint
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


@functools.cache
def fused_adam_available() -> bool:
    """Whether DeepSpeed's fused Adam op loads on this machine: prebuilt into the installed package,
    or JIT-built, which needs nvcc. Otherwise the engine takes torch's AdamW: a GPU machine without
    the CUDA toolkit would fail at start-up trying to compile it."""
    if on_cpu():
        return False  # the fused op has no CPU kernel
    from deepspeed.git_version_info import accelerator_name, installed_ops
    from deepspeed.ops.op_builder.builder import installed_cuda_version, probe_is_compatible

    builder = get_accelerator().create_op_builder("FusedAdamBuilder")
    if builder is None or not probe_is_compatible(builder):
        return False
    prebuilt = installed_ops.get(builder.name, False) and accelerator_name == get_accelerator()._name
    if not prebuilt:
        try:
            installed_cuda_version()  # raises without a CUDA_HOME whose nvcc runs
        except Exception:
            return False
    try:
        builder.load(verbose=False)  # cached: DeepSpeed's FusedAdam takes this very op
    except Exception as err:
        log.warning("fused_adam_unavailable", error=f"{type(err).__name__}: {err}")
        return False
    return True


def optimizer_name(optimizer: torch.optim.Optimizer | None) -> str:
    """The optimizer class DeepSpeed built, as the start-up log names it."""
    if optimizer is None:
        return "none"
    cls = type(optimizer)
    if cls.__module__.startswith("torch.optim"):
        return f"torch {cls.__name__}"
    if cls.__module__.startswith("deepspeed."):
        return f"DeepSpeed {cls.__name__}"
    return f"{cls.__module__}.{cls.__qualname__}"


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
                "torch_adam": not fused_adam_available(),
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


def default_attention() -> str | None:
    """flash_attention_2 on a GPU where the flash-attn package is installed (packed micro-batches
    need it to skip the T x T mask); else None, the model's own default (sdpa)."""
    if torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return None


def load_model(path: Path, cfg: LearnerConfig) -> PreTrainedModel:
    kwargs: dict[str, Any] = {"dtype": training_dtype(cfg)}
    attention = cfg.model.attn_implementation or default_attention()
    if attention is not None:
        kwargs["attn_implementation"] = attention
    return AutoModelForCausalLM.from_pretrained(path, **kwargs)


def _logp_entropy(logits: Tensor, targets: Tensor, temperature: float) -> tuple[Tensor, Tensor, Tensor]:
    """Log-prob of each row's target, the row's entropy and log-sum-exp, in fp32, from logits
    [C, V] at a temperature, with one fp32 [C, V] temporary."""
    top = logits.amax(-1, keepdim=True)
    probs = logits.to(torch.float32, copy=True).sub_(top).div_(temperature).exp_()  # unnormalised
    total = probs.sum(-1)
    lse = top.squeeze(-1).float() / temperature + total.log()
    logp = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1).float() / temperature - lse
    entropy = lse - probs.mul_(logits).sum(-1) / (total * temperature)
    return logp, entropy, lse


def _log_probs(logits: Tensor, temperature: float, lse: Tensor, *, reuse: bool = False) -> Tensor:
    """All log-probs [C, V], in an fp32 buffer that `_logits_grad` turns into the gradient: a new
    one, or with `reuse` fp32 logits' own."""
    return logits.to(torch.float32, copy=not reuse).div_(temperature).sub_(lse.unsqueeze(-1))


def _logits_grad(
    grad: Tensor,
    targets: Tensor,
    temperature: float,
    entropy: Tensor,
    grad_logp: Tensor,
    grad_entropy: Tensor | None,
) -> Tensor:
    """The gradient of the logits, built in place in `grad` (`_log_probs`), from those of the
    log-probs and, if given, of the entropy."""
    if grad_entropy is not None:
        # d logp / dz = onehot - p ; d entropy / dz = -p (log p + entropy)
        probs = grad.exp()
        grad.add_(entropy.unsqueeze(-1)).mul_(-grad_entropy.unsqueeze(-1))
        grad.sub_(grad_logp.unsqueeze(-1)).mul_(probs)
        del probs
    else:
        grad.exp_().mul_(-grad_logp.unsqueeze(-1))
    grad.scatter_add_(-1, targets.unsqueeze(-1), grad_logp.unsqueeze(-1))
    if temperature != 1.0:
        grad.div_(temperature)
    return grad


class _TokenLogpEntropy(torch.autograd.Function):
    """Log-prob and entropy of one chunk of logits [C, V] (`_logp_entropy`). Keeps only the
    logits for backward, which builds their gradient in one fp32 buffer: autograd's log_softmax
    and entropy would hold several."""

    @staticmethod
    def forward(
        ctx: FunctionCtx, logits: Tensor, targets: Tensor, temperature: float, entropy_grad: bool
    ) -> tuple[Tensor, Tensor]:
        logp, entropy, lse = _logp_entropy(logits, targets, temperature)
        ctx.save_for_backward(logits, lse, entropy, targets)
        ctx.temperature, ctx.entropy_grad = temperature, entropy_grad
        if not entropy_grad:
            ctx.mark_non_differentiable(entropy)
        return logp, entropy

    @staticmethod
    def backward(ctx: Any, grad_logp: Tensor, grad_entropy: Tensor) -> tuple[Tensor | None, ...]:
        logits, lse, entropy, targets = ctx.saved_tensors
        dtype = logits.dtype
        grad = _log_probs(logits, ctx.temperature, lse)
        del logits  # under checkpointing the last reference: a chunk holds two [C, V] buffers at most
        grad = _logits_grad(
            grad, targets, ctx.temperature, entropy, grad_logp, grad_entropy if ctx.entropy_grad else None
        )
        return grad.to(dtype), None, None, None


class _LinearHeadLogpEntropy(torch.autograd.Function):
    """Log-prob and entropy through a bias-free linear head [V, H], all chunks in one function:
    backward recomputes one chunk's logits at a time and adds its part of the weight's gradient
    in place to one buffer. Per-chunk autograd would hold that gradient about three times while
    it sums the chunks' parts (measured: bench.learner's logits_peak_ratio)."""

    @staticmethod
    def forward(
        ctx: FunctionCtx,
        hidden: Tensor,
        weight: Tensor,
        targets: Tensor,
        temperature: float,
        entropy_grad: bool,
        chunks: int,
    ) -> tuple[Tensor, Tensor]:
        parts = [
            _logp_entropy(h @ weight.t(), t, temperature)
            for h, t in zip(hidden.tensor_split(chunks), targets.tensor_split(chunks), strict=True)
        ]
        logp, entropy, lse = (torch.cat(column) for column in zip(*parts, strict=True))
        ctx.save_for_backward(hidden, weight, targets, lse, entropy)
        ctx.temperature, ctx.entropy_grad, ctx.chunks = temperature, entropy_grad, chunks
        if not entropy_grad:
            ctx.mark_non_differentiable(entropy)
        return logp, entropy

    @staticmethod
    def backward(ctx: Any, grad_logp: Tensor, grad_entropy: Tensor) -> tuple[Tensor | None, ...]:
        hidden, weight, targets, lse, entropy = ctx.saved_tensors
        # a low-precision weight's gradient is summed over the chunks in fp32, as one matmul would
        grad_weight = torch.zeros_like(weight, dtype=torch.promote_types(weight.dtype, torch.float32))
        grad_hidden = torch.empty_like(hidden)
        split = [
            x.tensor_split(ctx.chunks)
            for x in (hidden, targets, lse, entropy, grad_logp, grad_entropy, grad_hidden)
        ]
        for h, t, lse_c, entropy_c, grad_logp_c, grad_entropy_c, grad_hidden_c in zip(*split, strict=True):
            grad = _logits_grad(
                _log_probs(h @ weight.t(), ctx.temperature, lse_c, reuse=True),  # the logits are ours
                t,
                ctx.temperature,
                entropy_c,
                grad_logp_c,
                grad_entropy_c if ctx.entropy_grad else None,
            ).to(weight.dtype)
            grad_hidden_c.copy_(grad @ weight)
            grad_weight.addmm_(grad.t().to(grad_weight.dtype), h.to(grad_weight.dtype))
            del grad
        return grad_hidden, grad_weight.to(weight.dtype), None, None, None, None


def _chunk_logprobs(
    head: nn.Module, hidden: Tensor, targets: Tensor, temperature: float, entropy_grad: bool
) -> tuple[Tensor, Tensor]:
    return _TokenLogpEntropy.apply(head(hidden), targets, temperature, entropy_grad)


def logits_chunks(tokens: int, chunk_tokens: int, *, device: torch.device, agree: bool = False) -> int:
    """How many chunks of at most `chunk_tokens` the head takes `tokens` positions in; with `agree`,
    the most that any rank needs (a collective). Under ZeRO-3 every call of the head gathers its
    weight from all ranks, in forward and in backward: each rank must make as many calls."""
    chunks = max(1, -(-tokens // chunk_tokens))
    if agree and world_size() > 1:
        count = torch.tensor(chunks, device=device)
        torch.distributed.all_reduce(count, op=torch.distributed.ReduceOp.MAX)
        chunks = int(count)
    return chunks


def _plain_linear(head: nn.Module) -> bool:
    """A bias-free nn.Linear whose whole weight is here: not partitioned by ZeRO-3 (whose hooks
    gather it only inside the module's own call)."""
    return type(head) is nn.Linear and head.bias is None and not hasattr(head.weight, "ds_id")


def head_logprobs(
    head: nn.Module,
    hidden: Tensor,
    targets: Tensor,
    temperature: float,
    *,
    chunks: int,
    entropy_grad: bool = False,
) -> tuple[Tensor, Tensor]:
    """Log-prob of each target and the entropy, both [N] float32, from hidden states [N, H] through
    the output head in `chunks` near-equal chunks of rows (some empty if there are fewer rows):
    the logits of one chunk exist at once, in forward and, recomputed, in backward. A plain
    linear head goes through one function that sums its weight's gradient in place; any other
    (a ZeRO-3 partitioned one: its hooks gather the weight) is called as a module, chunk by chunk
    under checkpointing. Either way a weight tied to the embeddings gets both gradients."""
    if _plain_linear(head):
        return _LinearHeadLogpEntropy.apply(hidden, head.weight, targets, temperature, entropy_grad, chunks)
    logps, entropies = [], []
    for h, t in zip(hidden.tensor_split(chunks), targets.tensor_split(chunks), strict=True):
        if torch.is_grad_enabled():
            # the head has no randomness to replay
            logp, entropy = checkpoint(
                _chunk_logprobs,
                head,
                h,
                t,
                temperature,
                entropy_grad,
                use_reentrant=False,
                preserve_rng_state=False,
            )
        else:
            logp, entropy = _chunk_logprobs(head, h, t, temperature, entropy_grad)
        logps.append(logp)
        entropies.append(entropy)
    return torch.cat(logps), torch.cat(entropies)


@contextmanager
def _returning_kept_logprobs(
    model: PreTrainedModel, mb: MicroBatch, temperature: float, *, chunks: int, entropy_grad: bool
) -> Iterator[None]:
    """While open, a call of `model` returns (logp, entropy) [B, K] of `mb`'s kept positions: the
    decoder's last hidden state (after the final norm) goes through the output head chunk by chunk.

    They come out of the model's own call so that a DeepSpeed engine wrapping it hooks the start of
    its backward on them, as it does on logits: mixed-precision and ZeRO optimizers prepare there
    for the parameters' gradients, and an untied head's weight gets its gradient before any reaches
    the decoder's output. The model's own projection gets no positions (`logits_to_keep`)."""
    decoder, head = model.get_decoder(), model.get_output_embeddings()
    if decoder is model or head is None:
        raise TypeError(f"{type(model).__name__}: no separate decoder and output head")
    found: list[tuple[Tensor, Tensor]] = []

    def project(module: nn.Module, args: Any, output: Any) -> None:
        hidden = output[0][:, mb.keep]  # last_hidden_state
        logp, entropy = head_logprobs(
            head,
            hidden.reshape(-1, hidden.shape[-1]),
            mb.targets.reshape(-1),
            temperature,
            chunks=chunks,
            entropy_grad=entropy_grad,
        )
        found.append((logp.view(mb.targets.shape), entropy.view(mb.targets.shape)))

    def replace_output(module: nn.Module, args: Any, output: Any) -> tuple[Tensor, Tensor]:
        return found.pop()

    handles = [decoder.register_forward_hook(project), model.register_forward_hook(replace_output)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def sequence_logprobs(
    model: Any,
    mb: MicroBatch,
    temperature: float,
    *,
    chunk_tokens: int,
    entropy_grad: bool = False,
    same_chunks_on_ranks: bool = False,
) -> tuple[Tensor, Tensor]:
    """Log-prob of each target token and the entropy of each kept position, both [B, K], float32,
    under the model's distribution at `temperature` (the sampler's). `model`: a Hugging Face causal
    LM or a DeepSpeed engine around one. The fp32 logits exist for `chunk_tokens` positions at a
    time (at 32K-token micro-batches and a 150K vocabulary all of them would take tens of GB); the
    head is applied as is, so models that post-process logits (soft-capping, scaling) need more.
    `same_chunks_on_ranks`: every rank calls it together and makes as many head calls (ZeRO-3)."""
    hf = model.module if isinstance(model, deepspeed.DeepSpeedEngine) else model
    chunks = logits_chunks(
        mb.targets.numel(), chunk_tokens, device=mb.targets.device, agree=same_chunks_on_ranks
    )
    with _returning_kept_logprobs(hf, mb, temperature, chunks=chunks, entropy_grad=entropy_grad):
        logp, entropy = model(
            input_ids=mb.input_ids,
            attention_mask=mb.attention_mask,
            position_ids=mb.position_ids,  # packed: where each sequence starts, for the kernel
            logits_to_keep=mb.keep[:0],
            use_cache=False,
        )
    return logp, entropy


# Attention kernels that take packed rows as separate sequences from their position ids alone
# (varlen): no mask at all. Others (sdpa, eager) need a block-diagonal T x T mask for them.
VARLEN_ATTENTION = ("flash_attention_2", "flash_attention_3", "kernels-community/flash-attn")


def packs_sequences(packing: str, attn_implementation: str | None) -> bool:
    """Whether micro-batches are packed rows: `packing` "on"/"off", or "auto" (where the model's
    attention kernel reads packed rows without a mask)."""
    if packing == "auto":
        return attn_implementation in VARLEN_ATTENTION
    return packing == "on"


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
        self.packed = packs_sequences(cfg.batching.packing, model.config._attn_implementation)
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
            optimizer=optimizer_name(self.engine.basic_optimizer),
            attention=model.config._attn_implementation,
            packed=self.packed,
        )

    @property
    def module(self) -> PreTrainedModel:
        return self.engine.module

    def logprobs(
        self, mb: MicroBatch, temperature: float, *, entropy_grad: bool = False
    ) -> tuple[Tensor, Tensor]:
        return sequence_logprobs(
            self.engine,
            mb,
            temperature,
            chunk_tokens=self.cfg.batching.logits_chunk_tokens,
            entropy_grad=entropy_grad,
            same_chunks_on_ranks=self.engine.zero_optimization_stage() == 3,
        )

    @torch.no_grad()
    def reference_logprobs(self, mb: MicroBatch, temperature: float) -> Tensor:
        if self.reference is None:
            raise RuntimeError("grpo.kl_coef: no reference model loaded (kl_coef is 0)")
        chunk = self.cfg.batching.logits_chunk_tokens
        return sequence_logprobs(self.reference, mb, temperature, chunk_tokens=chunk)[0]

    def backward(self, loss: Tensor) -> None:
        self.engine.backward(loss, scale_wrt_gas=False)

    def step(self) -> float:
        """Apply the accumulated gradients; returns the global grad norm before clipping."""
        own_norm = None
        if not (self.engine.zero_optimization() or self.engine.bfloat16_enabled()):
            # Only ZeRO and mixed-precision optimizers report the norm; compute it for plain fp32,
            # of the gradient all ranks agree on. `step` averages the gradients over the ranks
            # again, which leaves identical ones as they are (exactly: (g + g) / 2 = g).
            if world_size() > 1:
                self.engine.allreduce_gradients()
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

    @torch.no_grad()
    def scale_gradients(self, factor: float) -> None:
        """Multiply the accumulated gradients in place (only where they are whole in `.grad`:
        no ZeRO, no mixed precision)."""
        if self.engine.zero_optimization() or self.engine.bfloat16_enabled() or self.engine.fp16_enabled():
            raise RuntimeError("scale_gradients: the gradients are not plain .grad tensors here")
        for p in self.module.parameters():
            if p.grad is not None:
                p.grad.mul_(factor)

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
