"""The DeepSpeed learner's loss and gradients against a plain-PyTorch GRPO written here.

The reference scores one sequence at a time (no padding, no micro-batches, no masks), keeps and
drops groups with its own loops, and back-propagates through a separate copy of the model.
Tolerance (float32; padding and micro-batches change the summation order): the loss to rel 1e-5
or abs 1e-7, every gradient tensor to rtol 1e-4 + atol 1e-6 while the largest gradient entries
are ~0.15. Measured on the CPU: loss within 1e-8 absolute, gradients within 8e-8 absolute.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from learner.config import LearnerConfig
from learner.training.grpo import Batch, select_groups
from learner.training.trainer import Learner
from proto.config import replace
from proto.rollout import RolloutGroup
from tests.learner.rollouts import mixed_batch

pytestmark = pytest.mark.slow

UNJUDGED = {"timeout", "sandbox_error", "bad_request"}


def make_learner(model_dir: Path, tmp_path: Path, optim: dict | None = None, **grpo: Any) -> Learner:
    cfg = LearnerConfig.model_validate(
        {
            "run_dir": tmp_path,
            "model": {"path": model_dir},
            "optim": {"lr": 1e-2, "grad_clip": 0.0, **(optim or {})},
            "batching": {"micro_batch_tokens": 40},  # several micro-batches for this batch
            "grpo": grpo,
        }
    )
    return Learner(cfg)


def screened(learner: Learner, groups: list[RolloutGroup]) -> Batch:
    return select_groups(groups, drop_zero_variance=learner.cfg.grpo.drop_zero_variance)


def fresh_model(model_dir: Path) -> torch.nn.Module:
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)


def completion_logprobs(model: torch.nn.Module, prompt: np.ndarray, tokens: np.ndarray, temperature: float):
    ids = torch.tensor(np.concatenate([prompt, tokens]), dtype=torch.long)[None]
    p = len(prompt)
    logsm = torch.log_softmax(model(ids).logits[0, p - 1 : -1].float() / temperature, dim=-1)
    return logsm.gather(-1, ids[0, p:, None])[:, 0], logsm


def reference(
    model: torch.nn.Module,
    groups: list[RolloutGroup],
    *,
    temperature: float = 1.0,
    eps: float = 1e-6,
    mask_truncated: bool = True,
    drop_zero_variance: bool = True,
    clip: tuple[float, float] = (0.2, 0.2),
    tis_cap: float | None = None,
    ref_model: torch.nn.Module | None = None,
    kl_coef: float = 0.0,
    entropy_coef: float = 0.0,
    old_model: torch.nn.Module | None = None,
) -> dict[str, Any]:
    """GRPO written out the long way: returns the loss (with graph) and the diagnostics."""
    loss_terms, loss_tokens = [], 0
    entropy_sum, mismatch_sum, mismatch_max, valid_tokens = 0.0, 0.0, 0.0, 0
    for g in groups:
        if any(c.judge_status in UNJUDGED for c in g.completions):
            continue
        rewards = torch.tensor([c.reward for c in g.completions], dtype=torch.float64)
        if bool((rewards == rewards[0]).all()):
            if drop_zero_variance:
                continue
            advantages = torch.zeros_like(rewards)
        else:
            advantages = (rewards - rewards.mean()) / (rewards.std() + eps)  # Bessel-corrected std
        for c, adv in zip(g.completions, advantages, strict=True):
            logp, logsm = completion_logprobs(model, g.prompt_token_ids, c.token_ids, temperature)
            if old_model is None:
                old = logp.detach()
            else:
                with torch.no_grad():
                    old = completion_logprobs(old_model, g.prompt_token_ids, c.token_ids, temperature)[0]
            sampler = torch.from_numpy(c.logprobs.copy())
            ratio = torch.exp(logp - old)
            a = float(adv)
            surrogate = -torch.minimum(ratio * a, torch.clamp(ratio, 1 - clip[0], 1 + clip[1]) * a)
            if tis_cap is not None:
                surrogate = surrogate * torch.clamp(torch.exp(old - sampler), max=tis_cap)
            if kl_coef:
                with torch.no_grad():
                    ref = completion_logprobs(ref_model, g.prompt_token_ids, c.token_ids, temperature)[0]
                surrogate = surrogate + kl_coef * (torch.exp(ref - logp) - (ref - logp) - 1)
            entropy = -(logsm.exp() * logsm).sum(-1)
            if entropy_coef:
                surrogate = surrogate - entropy_coef * entropy
            valid_tokens += len(c.token_ids)
            entropy_sum += float(entropy.detach().sum())
            mismatch_sum += float((old - sampler).abs().sum())
            mismatch_max = max(mismatch_max, float((old - sampler).abs().max()))
            if c.truncated and mask_truncated:
                continue
            loss_terms.append(surrogate.sum())
            loss_tokens += len(c.token_ids)
    return {
        "loss": torch.stack(loss_terms).sum() / loss_tokens,
        "entropy": entropy_sum / valid_tokens,
        "logprob_mismatch": mismatch_sum / valid_tokens,
        "logprob_mismatch_max": mismatch_max,
    }


def assert_grads_match(learner: Learner, model: torch.nn.Module) -> None:
    ours = dict(learner.engine.module.named_parameters())
    theirs = dict(model.named_parameters())
    assert ours.keys() == theirs.keys()
    for name, param in theirs.items():
        assert ours[name].grad is not None, name
        torch.testing.assert_close(
            ours[name].grad, param.grad, rtol=1e-4, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}"
        )
    assert any(float(p.grad.abs().max()) > 1e-4 for p in theirs.values())  # not trivially zero


CASES = {
    "recipe-default": {},
    "no-filtering-temperature": {"mask_truncated": False, "drop_zero_variance": False, "temperature": 0.7},
    "tis-entropy": {"tis_cap": 2.0, "entropy_coef": 0.01},
}


@pytest.mark.parametrize("case", list(CASES))
def test_loss_and_gradient_equal_reference(tiny_model_dir: Path, tmp_path: Path, case: str) -> None:
    options = CASES[case]
    temperature = options.get("temperature", 1.0)
    learner = make_learner(tiny_model_dir, tmp_path, **options)
    groups = mixed_batch()
    batch = learner.prepare(screened(learner, groups))
    assert len(batch.micro_batches) > 1
    ours = learner.accumulate(batch, temperature)

    model = fresh_model(tiny_model_dir)
    ref_options = {k: v for k, v in options.items() if k != "temperature"}
    theirs = reference(model, groups, temperature=temperature, **ref_options)
    theirs["loss"].backward()

    assert ours["loss"] == pytest.approx(float(theirs["loss"].detach()), rel=1e-5, abs=1e-7)
    assert ours["entropy"] == pytest.approx(theirs["entropy"], rel=1e-5)
    assert ours["logprob_mismatch"] == pytest.approx(theirs["logprob_mismatch"], rel=1e-5)
    assert ours["logprob_mismatch_max"] == pytest.approx(theirs["logprob_mismatch_max"], rel=1e-5)
    assert_grads_match(learner, model)


def test_kl_penalty_equals_reference(tiny_model_dir: Path, tmp_path: Path) -> None:
    # A reference policy that differs from the initial one, so that the KL term has a gradient.
    ref_dir = tmp_path / "reference"
    ref = fresh_model(tiny_model_dir)
    with torch.no_grad():
        generator = torch.Generator().manual_seed(1)
        for p in ref.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=generator))
    ref.save_pretrained(ref_dir)

    learner = make_learner(tiny_model_dir, tmp_path, kl_coef=0.5, ref_model_path=ref_dir)
    groups = mixed_batch(seed=3)
    ours = learner.accumulate(learner.prepare(screened(learner, groups)), 1.0)

    model = fresh_model(tiny_model_dir)
    theirs = reference(model, groups, kl_coef=0.5, ref_model=fresh_model(ref_dir))
    theirs["loss"].backward()
    assert ours["kl"] > 0
    assert ours["loss"] == pytest.approx(float(theirs["loss"].detach()), rel=1e-5)
    assert_grads_match(learner, model)


def test_second_ppo_update_clips_like_reference(tiny_model_dir: Path, tmp_path: Path) -> None:
    """After one optimizer step the ratio leaves 1; the second update's clipped loss and gradient
    still match the reference computed from the old and the updated model."""
    learner = make_learner(tiny_model_dir, tmp_path, updates_per_batch=2)
    groups = mixed_batch(seed=5)
    batch = learner.prepare(screened(learner, groups))
    first = learner.accumulate(batch, 1.0)
    learner.engine.step()
    second = learner.accumulate(batch, 1.0, old_logps=first["old_logps"])
    assert 0 < second["clip_frac"] < 1  # the clip is active on some tokens, not all

    old_model = fresh_model(tiny_model_dir)
    model = fresh_model(tiny_model_dir)
    model.load_state_dict(learner.engine.module.state_dict())
    theirs = reference(model, groups, old_model=old_model)
    theirs["loss"].backward()
    assert second["loss"] == pytest.approx(float(theirs["loss"].detach()), rel=1e-5)
    assert_grads_match(learner, model)


def test_micro_batches_give_the_full_batch_update(tiny_model_dir: Path, tmp_path: Path) -> None:
    """One optimizer step over many small micro-batches == one step over the batch in one piece.

    Gradients agree to atol 1e-7 (largest entries ~0.15). Adam's first step is g / (|g| + eps):
    with eps 1e-8 a last-bit difference in a near-zero gradient would move a weight by up to lr,
    so this step uses eps 1e-4 and lr 1e-3; weights then move by ~1e-3 and must agree to 5e-7
    (measured: 8e-8)."""
    groups = mixed_batch(seed=7)
    runs = {}
    for budget in (16, 100_000):
        learner = make_learner(tiny_model_dir, tmp_path / str(budget), optim={"lr": 1e-3, "eps": 1e-4})
        learner.cfg = replace(learner.cfg, batching={"micro_batch_tokens": budget})
        batch = learner.prepare(screened(learner, groups))
        learner.accumulate(batch, 1.0)
        grads = {n: p.grad.clone() for n, p in learner.engine.module.named_parameters()}
        learner.engine.zero_grad()
        metrics = learner.train_step(screened(learner, groups))
        params = {n: p.detach().clone() for n, p in learner.engine.module.named_parameters()}
        runs[budget] = (len(batch.micro_batches), metrics, grads, params)
    (small_count, small_metrics, small_grads, small), (big_count, big_metrics, big_grads, big) = (
        runs[16],
        runs[100_000],
    )
    assert small_count >= 5 and big_count == 1
    for name in big_grads:
        torch.testing.assert_close(small_grads[name], big_grads[name], rtol=0, atol=1e-7)
    assert small_metrics["loss"] == pytest.approx(big_metrics["loss"], rel=1e-5)
    assert small_metrics["grad_norm"] == pytest.approx(big_metrics["grad_norm"], rel=1e-5)
    initial = fresh_model(tiny_model_dir).state_dict()
    assert max(float((big[n] - initial[n]).abs().max()) for n in big) > 5e-4  # the step moved weights
    for name in big:
        torch.testing.assert_close(small[name], big[name], rtol=0, atol=5e-7)
