"""Rollouts to tensors, in micro-batches bounded by a token budget, padded or packed.

Padded (`collate`): each completion becomes one row `prompt + completion`, right-padded.
Sequences are bucketed by length (longest first) so that rows x longest row stays within
`micro_batch_tokens`; padding is then small and a 32K response simply travels alone.

Packed (`pack`): the sequences of a micro-batch follow each other in one row, with position ids
that restart at 0 for each and no attention mask. A varlen attention kernel (flash attention)
reads the sequence boundaries off the position ids: no padding, no T x T mask.

Either way only positions that predict a response token are kept for the vocabulary projection
(`keep`), so prompts cost no logits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np
import torch
from torch import Tensor

from proto.rollout import RolloutGroup


@dataclass(frozen=True)
class SequenceSample:
    prompt: np.ndarray  # int32 token ids
    completion: np.ndarray  # int32 token ids
    sampler_logp: np.ndarray  # float32, one per completion token
    advantage: float
    trained: bool  # False: no gradient (cut at the length limit with overlong filtering on)

    @property
    def length(self) -> int:
        return len(self.prompt) + len(self.completion)


def check_group(group: RolloutGroup, vocab_size: int | None) -> None:
    """Refuse what would crash or poison the step, naming the group and the field."""
    where = f"rollout_group {group.work_id}"
    if len(group.prompt_token_ids) == 0:
        raise ValueError(f"{where}: prompt_token_ids is empty")
    arrays = [("prompt_token_ids", group.prompt_token_ids)]
    arrays += [(f"completions.{i}.token_ids", c.token_ids) for i, c in enumerate(group.completions)]
    for field, ids in arrays:
        if len(ids) and (int(ids.min()) < 0 or (vocab_size is not None and int(ids.max()) >= vocab_size)):
            raise ValueError(f"{where}: {field} holds ids outside [0, {vocab_size})")
    for i, c in enumerate(group.completions):
        if not np.isfinite(c.logprobs).all():
            raise ValueError(f"{where}: completions.{i}.logprobs holds non-finite values")


def build_samples(
    groups: Sequence[RolloutGroup],
    advantages: Sequence[np.ndarray],
    *,
    mask_truncated: bool,
    vocab_size: int | None = None,
) -> list[SequenceSample]:
    samples = []
    for group, group_adv in zip(groups, advantages, strict=True):
        check_group(group, vocab_size)
        for completion, adv in zip(group.completions, group_adv, strict=True):
            if len(completion.token_ids) == 0:
                continue  # nothing to score; it still counted in its group's mean and std
            samples.append(
                SequenceSample(
                    prompt=group.prompt_token_ids,
                    completion=completion.token_ids,
                    sampler_logp=completion.logprobs,
                    advantage=float(adv),
                    trained=not (mask_truncated and completion.truncated),
                )
            )
    return samples


def plan_micro_batches(lengths: Sequence[int], token_budget: int) -> list[list[int]]:
    """Indices grouped so that len(batch) * max length <= token_budget (a longer one goes alone)."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        # Sorted longest first: the first row of a batch sets its padded width.
        if current and (len(current) + 1) * lengths[current[0]] > token_budget:
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def plan_packed(lengths: Sequence[int], token_budget: int) -> list[list[int]]:
    """Indices grouped so that each group's total length is <= token_budget (a longer sequence
    goes alone): first fit, longest first."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    room: list[int] = []
    for i in order:
        fit = next((b for b, free in enumerate(room) if lengths[i] <= free), None)
        if fit is None:
            batches.append([i])
            room.append(token_budget - lengths[i])
        else:
            batches[fit].append(i)
            room[fit] -= lengths[i]
    return batches


@dataclass
class MicroBatch:
    input_ids: Tensor  # [B, T] int64: right-padded rows, or one packed row (B = 1)
    attention_mask: Tensor | None  # [B, T]; None when packed
    keep: Tensor  # [K] positions whose logits predict a response token
    targets: Tensor  # [B, K] the token each kept position predicts
    loss_mask: Tensor  # [B, K] 1 where the token trains
    valid_mask: Tensor  # [B, K] 1 on every response token (diagnostics: entropy, mismatch)
    advantages: Tensor  # [B, K]
    sampler_logp: Tensor  # [B, K]
    num_tokens: int  # real (unpadded) tokens, prompts included
    position_ids: Tensor | None = None  # [1, T] when packed: restarting at 0 for each sequence

    @property
    def packed(self) -> bool:
        return self.position_ids is not None

    def to(self, device: torch.device | str) -> MicroBatch:
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        for name, value in moved.items():
            if isinstance(value, Tensor):
                moved[name] = value.to(device, non_blocking=True)
        return MicroBatch(**moved)


def collate(samples: Sequence[SequenceSample], pad_id: int = 0) -> MicroBatch:
    rows, width = len(samples), max(s.length for s in samples)
    first = min(len(s.prompt) for s in samples) - 1  # earliest position predicting a response token
    kept = width - 1 - first
    input_ids = torch.full((rows, width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((rows, width), dtype=torch.long)
    targets = torch.zeros((rows, kept), dtype=torch.long)
    loss_mask = torch.zeros((rows, kept))
    valid_mask = torch.zeros((rows, kept))
    advantages = torch.zeros((rows, kept))
    sampler_logp = torch.zeros((rows, kept))
    for row, s in enumerate(samples):
        p, c = len(s.prompt), len(s.completion)
        input_ids[row, :p] = torch.from_numpy(s.prompt.astype(np.int64))
        input_ids[row, p : p + c] = torch.from_numpy(s.completion.astype(np.int64))
        attention_mask[row, : p + c] = 1
        cols = slice(p - 1 - first, p - 1 - first + c)  # logits at p-1+j predict completion[j]
        targets[row, cols] = input_ids[row, p : p + c]
        valid_mask[row, cols] = 1.0
        loss_mask[row, cols] = float(s.trained)
        advantages[row, cols] = s.advantage
        sampler_logp[row, cols] = torch.from_numpy(s.sampler_logp.astype(np.float32))
    return MicroBatch(
        input_ids=input_ids,
        attention_mask=attention_mask,
        keep=torch.arange(first, width - 1),
        targets=targets,
        loss_mask=loss_mask,
        valid_mask=valid_mask,
        advantages=advantages,
        sampler_logp=sampler_logp,
        num_tokens=int(attention_mask.sum()),
    )


def pack(samples: Sequence[SequenceSample]) -> MicroBatch:
    """The samples one after another in a single row [1, T], T = their total length."""
    ids = np.concatenate([np.concatenate([s.prompt, s.completion]) for s in samples]).astype(np.int64)
    positions = np.concatenate([np.arange(s.length) for s in samples])
    # logits at a sequence's position p-1+j predict its completion[j]
    starts = np.cumsum([0] + [s.length for s in samples[:-1]])
    keep = np.concatenate(
        [
            start + len(s.prompt) - 1 + np.arange(len(s.completion))
            for start, s in zip(starts, samples, strict=True)
        ]
    )
    per_token = [
        (
            np.ones(len(s.completion)) * float(s.trained),
            np.full(len(s.completion), s.advantage),
            s.sampler_logp,
        )
        for s in samples
    ]

    def row(values: list[np.ndarray]) -> Tensor:
        return torch.from_numpy(np.concatenate(values).astype(np.float32)).unsqueeze(0)

    input_ids = torch.from_numpy(ids).unsqueeze(0)
    keep_t = torch.from_numpy(keep.astype(np.int64))
    return MicroBatch(
        input_ids=input_ids,
        attention_mask=None,
        keep=keep_t,
        targets=input_ids[:, keep_t + 1],
        loss_mask=row([m for m, _, _ in per_token]),
        valid_mask=torch.ones((1, len(keep))),
        advantages=row([a for _, a, _ in per_token]),
        sampler_logp=row([lp for _, _, lp in per_token]),
        num_tokens=len(ids),
        position_ids=torch.from_numpy(positions.astype(np.int64)).unsqueeze(0),
    )


def micro_batches(
    samples: Sequence[SequenceSample], token_budget: int, pad_id: int = 0, *, packed: bool = False
) -> list[MicroBatch]:
    """Micro-batches of at most `token_budget` tokens: packed rows (real tokens count) or padded
    rows (rows x longest row count)."""
    if packed:
        return [
            pack([samples[i] for i in batch])
            for batch in plan_packed([s.length for s in samples], token_budget)
        ]
    plan = plan_micro_batches([s.length for s in samples], token_budget)
    return [collate([samples[i] for i in batch], pad_id) for batch in plan]


def split_by_tokens(samples: Sequence[SequenceSample], ranks: int) -> list[list[SequenceSample]]:
    """Each rank's share of a step's samples, balanced by tokens: longest first, each to the rank
    with the fewest tokens so far (ties: the lowest rank). Deterministic, and order-keeping within
    a share."""
    load = [0] * ranks
    owner = [0] * len(samples)
    for i in sorted(range(len(samples)), key=lambda i: (-samples[i].length, i)):
        rank = min(range(ranks), key=lambda r: (load[r], r))
        owner[i] = rank
        load[rank] += samples[i].length
    return [[s for s, o in zip(samples, owner, strict=True) if o == rank] for rank in range(ranks)]


def idle_micro_batch(like: MicroBatch | None, pad_id: int = 0) -> MicroBatch:
    """A micro-batch that trains nothing (every mask zero): what a rank with fewer micro-batches
    than another runs, so that every rank makes the same forward and backward calls (ZeRO-3
    gathers parameters in them, collectively)."""
    if like is None:
        one = np.array([pad_id], dtype=np.int32)
        like = collate([SequenceSample(one, one, np.zeros(1, np.float32), 0.0, False)], pad_id)
    zero = torch.zeros_like(like.loss_mask)
    return MicroBatch(
        input_ids=like.input_ids,
        attention_mask=like.attention_mask,
        keep=like.keep,
        targets=like.targets,
        loss_mask=zero,
        valid_mask=zero,
        advantages=zero,
        sampler_logp=zero,
        num_tokens=0,
        position_ids=like.position_ids,
    )
