"""One GRPO learner step: a batch of judged rollout groups in, one policy update (version v -> v+1) out.

    batch (screened where it came in: grpo.screen) -> advantages -> micro-batches
          -> for each update: forward, token loss / global token count, backward -> engine.step

The first update's log-probs (detached) are the "old" policy for later updates, so the default
single update is exactly on-policy (ratio 1). Diagnostics (entropy, mismatch against the
sampler) come from that same forward: they cost no extra pass.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import structlog
import torch
from torch import Tensor

from learner.config import LearnerConfig
from learner.on_policy import OnPolicyClock
from learner.training import checkpoint
from learner.training.batching import (
    MicroBatch,
    SequenceSample,
    build_samples,
    idle_micro_batch,
    micro_batches,
    split_by_tokens,
)
from learner.training.engine import PolicyEngine, all_reduce_sum, ensure_distributed, world_size
from learner.training.grpo import (
    Batch,
    advantages,
    is_correct,
    is_zero_variance,
    logprob_mismatch,
    token_loss,
)
from learner.training.ranks import SAVE, STEP, STOP, WEIGHTS, RankGroup
from proto.rollout import RolloutGroup

log = structlog.get_logger("learner.trainer")

# measures of the update that a step without a trained token cannot take
UNMEASURED = ("loss", "entropy", "logprob_mismatch", "logprob_mismatch_max", "grad_norm", "tokens_per_s")


@dataclass
class PreparedBatch:
    samples: list[SequenceSample]  # this rank's share
    micro_batches: list[MicroBatch]  # as many on every rank (idle ones pad a short share)
    loss_tokens: int  # global: tokens that carry gradient, the loss's denominator
    valid_tokens: int  # global: every response token of the trained groups
    tokens: int  # global: every token of the step's sequences, prompts included


@dataclass
class Stream:
    """What a step trained before its batch was complete: the groups, and the measures of their
    micro-batches as sums over tokens (the step's means are taken at the end)."""

    parts: int = 0
    work_ids: set[str] = field(default_factory=set)
    loss_tokens: int = 0
    valid_tokens: int = 0
    tokens: int = 0
    micro_batches: int = 0
    seconds: float = 0.0  # of learner compute while the batch was still coming
    sums: Counter[str] = field(default_factory=Counter)
    mismatch_max: float = 0.0

    def add(
        self, groups: list[RolloutGroup], part: PreparedBatch, out: dict[str, Any], seconds: float
    ) -> None:
        self.parts += 1
        self.work_ids |= {g.work_id for g in groups}
        self.loss_tokens += part.loss_tokens
        self.valid_tokens += part.valid_tokens
        self.tokens += part.tokens
        self.micro_batches += len(part.micro_batches)
        self.seconds += seconds
        if out:  # accumulate's means, over this part's tokens, back to sums
            for key in ("loss", "kl"):
                if key in out:
                    self.sums[key] += out[key] * max(part.loss_tokens, 1)
            for key in ("entropy", "logprob_mismatch", "logprob_mismatch_kl"):
                self.sums[key] += out[key] * max(part.valid_tokens, 1)
            self.mismatch_max = max(self.mismatch_max, out["logprob_mismatch_max"])

    def measures(self) -> dict[str, Any]:
        """The step's record fields, as `Learner._update` gives them."""
        by_loss, by_valid = max(self.loss_tokens, 1), max(self.valid_tokens, 1)
        out: dict[str, Any] = {
            "loss": self.sums["loss"] / by_loss,
            "entropy": self.sums["entropy"] / by_valid,
            "logprob_mismatch": self.sums["logprob_mismatch"] / by_valid,
            "logprob_mismatch_max": self.mismatch_max,
            "logprob_mismatch_kl": self.sums["logprob_mismatch_kl"] / by_valid,
            "micro_batches": self.micro_batches,
            "tokens": self.tokens,
            "loss_tokens": self.loss_tokens,
            "stream_s": self.seconds,
            "streamed_parts": self.parts,
        }
        if "kl" in self.sums:
            out["kl"] = self.sums["kl"] / by_loss
        return out


def _all_reduce_max(value: Tensor) -> Tensor:
    if world_size() > 1:
        value = value.clone()
        torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
    return value


class Learner:
    """The GRPO trainer around a `PolicyEngine`. Its step and version are those of its
    `OnPolicyClock` (a run shares it with the work ledger)."""

    def __init__(
        self, cfg: LearnerConfig, engine: PolicyEngine | None = None, on_policy: OnPolicyClock | None = None
    ) -> None:
        self.cfg = cfg
        self.on_policy = on_policy or OnPolicyClock()
        if cfg.torch_threads is not None:
            torch.set_num_threads(cfg.torch_threads)
        random.seed(cfg.seed)
        np.random.seed(cfg.seed)
        torch.manual_seed(cfg.seed)
        ensure_distributed()
        self.ranks = RankGroup()
        if self.ranks.size != cfg.ranks:
            raise ValueError(
                f"learner.ranks: {cfg.ranks}, but this learner runs as {self.ranks.size} process(es): "
                f"start it with `torchrun --nproc-per-node {cfg.ranks}` (acerl run does)"
            )
        self.engine = engine or PolicyEngine(cfg)
        self._stream = Stream()

    @property
    def step(self) -> int:
        """Steps finished; step v trains on samples of version v (within the clock's staleness)."""
        return self.on_policy.version

    @property
    def version(self) -> int:
        """The policy version of the weights held now."""
        return self.on_policy.version

    # ---- the step -------------------------------------------------------------------------

    def samples(self, batch: Batch, *, mask_truncated: bool | None = None) -> list[SequenceSample]:
        """The batch's sequences with their advantages (computed over whole groups, so on rank 0);
        `mask_truncated` None: as configured (`grpo.mask_truncated`)."""
        mask = self.cfg.grpo.mask_truncated if mask_truncated is None else mask_truncated
        return build_samples(
            batch.trained,
            advantages(batch.trained, self.cfg.grpo.adv_eps),
            mask_truncated=mask,
            vocab_size=self.engine.module.config.vocab_size,
        )

    def prepare(self, batch: Batch, *, mask_truncated: bool | None = None) -> PreparedBatch:
        """The whole batch on a single rank: its samples and micro-batches."""
        return self.prepare_share(self.samples(batch, mask_truncated=mask_truncated))

    def prepare_share(self, share: list[SequenceSample]) -> PreparedBatch:
        """This rank's micro-batches and the step's global token counts (every rank calls it)."""
        budget = self.cfg.batching.micro_batch_tokens
        mbs = micro_batches(share, budget, self.engine.pad_id, packed=self.engine.packed) if share else []
        local = torch.tensor(
            [
                sum(float(mb.loss_mask.sum()) for mb in mbs),
                sum(float(mb.valid_mask.sum()) for mb in mbs),
                sum(s.length for s in share),
            ],
            dtype=torch.float64,
        )
        loss_tokens, valid_tokens, tokens = all_reduce_sum(local.to(self.engine.device)).tolist()
        if world_size() > 1:
            most = int(_all_reduce_max(torch.tensor(float(len(mbs)), device=self.engine.device)))
            while len(mbs) < most:
                mbs.append(idle_micro_batch(mbs[0] if mbs else None, self.engine.pad_id))
        return PreparedBatch(share, mbs, int(loss_tokens), int(valid_tokens), int(tokens))

    def accumulate(
        self,
        batch: PreparedBatch,
        temperature: float,
        *,
        old_logps: list[Tensor] | None = None,
        ref_logps: list[Tensor] | None = None,
        loss_scale: float | None = None,
    ) -> dict[str, Any]:
        """Forward and backward over every micro-batch, gradients adding up to those of the loss
        over the whole global batch (`loss_scale` 1: of the summed loss, to be scaled later).
        Without `old_logps` this is the first (on-policy) update and it returns them, with the
        diagnostics."""
        g = self.cfg.grpo
        first = old_logps is None
        scale = world_size() / max(batch.loss_tokens, 1) if loss_scale is None else loss_scale
        device = self.engine.device
        new_old: list[Tensor] = []
        new_ref: list[Tensor] = []
        sums = {
            k: torch.zeros((), dtype=torch.float64, device=device) for k in ("loss", "entropy", "kl", "clip")
        }
        mismatch = {
            k: torch.zeros((), dtype=torch.float64, device=device) for k in ("abs_sum", "kl_sum", "max")
        }
        for i, mb in enumerate(batch.micro_batches):
            mb = mb.to(device)
            logp, entropy = self.engine.logprobs(mb, temperature, entropy_grad=g.entropy_coef > 0)
            old = logp.detach() if first else old_logps[i]  # type: ignore[index]
            ref = None
            if g.kl_coef > 0:
                ref = self.engine.reference_logprobs(mb, temperature) if ref_logps is None else ref_logps[i]
                new_ref.append(ref)
            per_token = token_loss(
                logp,
                old,
                mb.advantages,
                clip_low=g.clip_low,
                clip_high=g.clip_high,
                sampler_logp=mb.sampler_logp,
                tis_cap=g.tis_cap,
                ref_logp=ref,
                kl_coef=g.kl_coef,
                entropy=entropy,
                entropy_coef=g.entropy_coef,
            )
            summed = (per_token * mb.loss_mask).sum()
            self.engine.backward(summed * scale)
            with torch.no_grad():
                sums["loss"] += summed.detach().double()
                sums["entropy"] += (entropy.detach() * mb.valid_mask).sum().double()
                if ref is not None:
                    delta = ref - logp.detach()
                    sums["kl"] += ((torch.exp(delta) - delta - 1.0) * mb.loss_mask).sum().double()
                ratio = torch.exp(logp.detach() - old)
                outside = (ratio < 1.0 - g.clip_low) | (ratio > 1.0 + g.clip_high)
                sums["clip"] += (outside.float() * mb.loss_mask).sum().double()
                if first:
                    new_old.append(old)
                    m = logprob_mismatch(old, mb.sampler_logp, mb.valid_mask)
                    mismatch["abs_sum"] += m["abs_sum"].double()
                    mismatch["kl_sum"] += m["kl_sum"].double()
                    mismatch["max"] = torch.maximum(mismatch["max"], m["max"].double())
        totals = all_reduce_sum(torch.stack([sums["loss"], sums["entropy"], sums["kl"], sums["clip"]]))
        loss_n, valid_n = max(batch.loss_tokens, 1), max(batch.valid_tokens, 1)
        out: dict[str, Any] = {
            "loss": float(totals[0]) / loss_n,
            "entropy": float(totals[1]) / valid_n,
            "clip_frac": float(totals[3]) / loss_n,
        }
        if g.kl_coef > 0:
            out["kl"] = float(totals[2]) / loss_n
            out["ref_logps"] = ref_logps if ref_logps is not None else new_ref
        if first:
            mm = all_reduce_sum(torch.stack([mismatch["abs_sum"], mismatch["kl_sum"]]))
            out["logprob_mismatch"] = float(mm[0]) / valid_n
            out["logprob_mismatch_kl"] = float(mm[1]) / valid_n
            out["logprob_mismatch_max"] = float(_all_reduce_max(mismatch["max"]))
            out["old_logps"] = new_old
        return out

    def train_step(
        self,
        batch: Batch,
        *,
        temperature: float | None = None,
        mask_truncated: bool | None = None,
        lr: float | None = None,
    ) -> dict[str, Any]:
        """Train on one batch; returns the step's metrics. `temperature` None: the one the batch was
        sampled at; `mask_truncated` and `lr` None: as configured (a stage passes its own).

        The step finishes on the clock either way; `trained` False says no token carried gradient
        and the weights stayed as they were (learner/on_policy.py says why the version moves on)."""
        started = time.perf_counter()
        temperature = batch.temperature if temperature is None else temperature
        metrics = self._batch_metrics(batch)
        if self._stream.parts:
            metrics.update(self._finish_stream(batch, temperature, mask_truncated, lr, started))
        else:
            samples = self.samples(batch, mask_truncated=mask_truncated)
            shares = split_by_tokens(samples, self.ranks.size)
            share = self.ranks.tell(STEP, [(s, temperature, lr) for s in shares])[0]
            metrics.update(self._update(share, temperature, lr, started))
        if metrics["trained"]:
            log.info(
                "train_step",
                step=metrics["step"],
                version=self.version,
                loss=round(metrics["loss"], 6),
                reward=round(metrics["reward_mean"], 4),
                entropy=round(metrics["entropy"], 4),
                grad_norm=round(metrics["grad_norm"], 4),
                mismatch=round(metrics["logprob_mismatch"], 6),
                zero_var=metrics["groups_zero_var"],
                unjudged=metrics["groups_unjudged"],
                step_s=round(metrics["step_s"], 3),
            )
        return metrics

    # ---- streaming: the groups of a step trained while the rest are still sampled -----------

    @property
    def streams(self) -> bool:
        """Whether a step's groups may train as they arrive (`batching.stream`). The loss is a mean
        over the whole step's tokens, a count known only once the batch is complete: the streamed
        parts back-propagate the summed loss and the gradient is scaled once, in place, at the
        end. That needs the whole fp32 gradient in the parameters' `.grad`: one rank, no ZeRO
        partitioning, no mixed precision, and one update per batch."""
        e = self.engine.engine
        return (
            self.cfg.batching.stream
            and self.ranks.size == 1
            and self.cfg.grpo.updates_per_batch == 1
            and not (e.zero_optimization() or e.bfloat16_enabled() or e.fp16_enabled())
        )

    def stream(self, groups: list[RolloutGroup], *, mask_truncated: bool | None = None) -> None:
        """Forward and backward now over `groups`, trained groups of the coming step's batch."""
        if not self.streams:
            raise RuntimeError("learner.stream: this learner cannot stream (see Learner.streams)")
        started = time.perf_counter()
        batch = Batch(trained=groups)
        part = self.prepare(batch, mask_truncated=mask_truncated)
        out = self.accumulate(part, batch.temperature, loss_scale=1.0) if part.loss_tokens else {}
        self._stream.add(groups, part, out, time.perf_counter() - started)

    def drop_stream(self) -> None:
        """Forget what was streamed (the batch it was for will not come): no gradient is left."""
        if self._stream.parts:
            self.engine.zero_grad()
        self._stream = Stream()

    def _finish_stream(
        self, batch: Batch, temperature: float, mask_truncated: bool | None, lr: float | None, started: float
    ) -> dict[str, Any]:
        """The step of a batch whose first groups were streamed: the rest, then one update."""
        stream, self._stream = self._stream, Stream()
        trained = {g.work_id for g in batch.trained}
        if not stream.work_ids <= trained:  # never expected: start over rather than train a stranger
            log.warning("stream_discarded", groups=sorted(stream.work_ids - trained)[:10])
            self.engine.zero_grad()
            return self._update(self.samples(batch, mask_truncated=mask_truncated), temperature, lr, started)
        rest = [g for g in batch.trained if g.work_id not in stream.work_ids]
        if lr is not None:
            self.engine.set_lr(lr)
        lr_used = self.engine.lr
        try:
            if rest:
                part = self.prepare(Batch(trained=rest), mask_truncated=mask_truncated)
                out = self.accumulate(part, temperature, loss_scale=1.0) if part.loss_tokens else {}
                stream.add(rest, part, out, 0.0)
            if stream.loss_tokens == 0:
                self.engine.zero_grad()
                return self._skipped(started)
            self.engine.scale_gradients(1.0 / stream.loss_tokens)
            grad_norm = self.engine.step()
        except BaseException:
            self.engine.zero_grad()
            raise
        step_s = time.perf_counter() - started
        return {
            "ranks": 1,
            "trained": True,
            **stream.measures(),
            "grad_norm": grad_norm,
            "lr": lr_used,
            "optimizer_steps": self.engine.optimizer_steps,
            "new_version": self.on_policy.finish(),
            "step_s": step_s,
            "tokens_per_s": stream.tokens / (step_s + stream.seconds),
        }

    def _skipped(self, started: float) -> dict[str, Any]:
        """A step in which no token carried gradient: the clock moves on, the weights stay."""
        step = self.step
        version = self.on_policy.finish()
        if self.ranks.leads:
            log.warning("step_skipped", step=step, version=version, reason="no token carries gradient")
        return {
            "ranks": self.ranks.size,
            "trained": False,
            "new_version": version,
            "step_s": time.perf_counter() - started,
            **dict.fromkeys(UNMEASURED, None),  # written as null: nothing to measure
        }

    def follow(self) -> None:
        """On a rank other than 0: do what rank 0 says until it says stop."""
        while True:
            op, payload = self.ranks.receive()
            if op == STEP:
                share, temperature, lr = payload
                self._update(share, temperature, lr, time.perf_counter())
            elif op == WEIGHTS:
                self.weights()
            elif op == SAVE:
                self.save_checkpoint()
            elif op == STOP:
                return
            else:
                raise RuntimeError(f"rank {self.ranks.rank}: unknown order {op!r} from rank 0")

    def release(self) -> None:
        """On rank 0, at the end of a run: the other ranks stop following."""
        if self.ranks.size > 1:
            self.ranks.tell(STOP)

    def _update(
        self, share: list[SequenceSample], temperature: float, lr: float | None, started: float
    ) -> dict[str, Any]:
        """Every rank: one update from its share of the step's samples; the step's measures."""
        metrics: dict[str, Any] = {"ranks": self.ranks.size}
        prepared = self.prepare_share(share)
        if lr is not None:
            self.engine.set_lr(lr)
        if prepared.loss_tokens == 0:
            return self._skipped(started)
        lr_used = self.engine.lr
        grad_norms = []
        try:
            first = self.accumulate(prepared, temperature)
            grad_norms.append(self.engine.step())
            later = first
            for _ in range(self.cfg.grpo.updates_per_batch - 1):
                later = self.accumulate(
                    prepared, temperature, old_logps=first["old_logps"], ref_logps=first.get("ref_logps")
                )
                grad_norms.append(self.engine.step())
        except BaseException:
            self.engine.zero_grad()  # no half-accumulated gradient leaks into the next step
            raise
        step_s = time.perf_counter() - started
        tokens = prepared.tokens
        micro = all_reduce_sum(torch.tensor(float(len(prepared.micro_batches)), device=self.engine.device))
        metrics.update(
            trained=True,
            loss=first["loss"],
            entropy=first["entropy"],
            logprob_mismatch=first["logprob_mismatch"],
            logprob_mismatch_max=first["logprob_mismatch_max"],
            logprob_mismatch_kl=first["logprob_mismatch_kl"],
            grad_norm=grad_norms[0],
            lr=lr_used,
            micro_batches=int(micro),  # of every rank, idle ones included
            tokens=tokens,
            loss_tokens=prepared.loss_tokens,
            optimizer_steps=self.engine.optimizer_steps,
            new_version=self.on_policy.finish(),
            step_s=step_s,
            tokens_per_s=tokens / step_s,
        )
        if "kl" in first:
            metrics["kl"] = first["kl"]
        if self.cfg.grpo.updates_per_batch > 1:
            metrics.update(
                clip_frac=later["clip_frac"], loss_last=later["loss"], grad_norm_last=grad_norms[-1]
            )
        return metrics

    def _batch_metrics(self, batch: Batch) -> dict[str, Any]:
        """What the batch held: rewards, accuracy and lengths of every judged completion, left-out
        groups included."""
        judged = batch.groups
        completions = [(g.kind, c) for g in judged for c in g.completions]
        lengths = [len(c.token_ids) for _, c in completions]
        versions = (
            [g.policy_version for g in batch.trained] or [g.policy_version for g in judged] or [self.version]
        )
        stages = Counter(g.stage for g in judged)
        zero_variance = sum(is_zero_variance(g) for g in judged)
        metrics: dict[str, Any] = {
            "kind": "train",
            "step": self.step,
            "policy_version": self.version,
            "stage": stages.most_common(1)[0][0] if stages else None,
            "sample_versions": [min(versions), max(versions)],
            "groups": len(judged) + batch.unjudged,
            "groups_trained": len(batch.trained),
            "groups_unjudged": batch.unjudged,
            "groups_zero_var": zero_variance,
            "zero_var_frac": zero_variance / len(judged) if judged else 0.0,
            "completions": len(completions),
            "reward_mean": float(np.mean([c.reward for _, c in completions])) if completions else 0.0,
            "accuracy": float(np.mean([is_correct(c.judge_status) for _, c in completions]))
            if completions
            else 0.0,
            "response_len_mean": float(np.mean(lengths)) if lengths else 0.0,
            "response_len_max": max(lengths, default=0),
            "truncated_frac": float(np.mean([c.truncated for _, c in completions])) if completions else 0.0,
        }
        for kind in sorted({k for k, _ in completions}):
            of_kind = [c for k, c in completions if k == kind]
            metrics[f"reward_mean_{kind}"] = float(np.mean([c.reward for c in of_kind]))
            metrics[f"accuracy_{kind}"] = float(np.mean([is_correct(c.judge_status) for c in of_kind]))
        return metrics

    # ---- weights and checkpoints -------------------------------------------------------------

    def weights(self) -> dict[str, Tensor]:
        """A CPU snapshot of the current weights for publishing (dtype per `publish.dtype`)."""
        if self.ranks.leads:
            self.ranks.tell(WEIGHTS)  # under ZeRO-3 every rank gives its shard to the gathering
        dtype = None if self.cfg.publish.dtype == "model" else getattr(torch, self.cfg.publish.dtype)
        return self.engine.named_weights(dtype)

    def save_checkpoint(self, extra_state: dict[str, Any] | None = None) -> Path:
        """Every rank writes its part; rank 0 (which tells the others) the run's state."""
        if self.ranks.leads:
            self.ranks.tell(SAVE)
        c = self.cfg.checkpoint
        return checkpoint.save(
            self.cfg.checkpoint_dir,
            self.engine,
            step=self.step,
            policy_version=self.version,
            optimizer_steps=self.engine.optimizer_steps,
            extra_state=extra_state,
            hf_model=c.hf_model,
            tokenizer_dir=self.cfg.model.path,
            keep_last=c.keep_last,
        )

    def resume(self, path: Path | None = None) -> checkpoint.CheckpointState | None:
        """Load `path`, or the newest complete checkpoint of the run; None when there is none."""
        path = path or checkpoint.find_latest(self.cfg.checkpoint_dir)
        if path is None:
            return None
        state = checkpoint.load(path, self.engine)
        self.on_policy.restore(state.policy_version)
        return state

    def due_checkpoint(self) -> bool:
        every = self.cfg.checkpoint.every_steps
        return every > 0 and self.step > 0 and self.step % every == 0
