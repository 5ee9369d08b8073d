"""Log-probs and entropy through the output head in chunks of tokens equal those of the whole
logits at once (the learner's former computation): values and the gradient of every parameter,
for tied and untied heads, a chunk that does not divide the token count, a temperature other
than 1, and a loss on the log-probs or on the entropy. Then the same through the DeepSpeed engine,
ZeRO-2 and 3 included.

Tolerance (float32, another summation order): values to 1e-6 absolute plus 1e-6 relative, each
gradient tensor to 1e-5 of its largest entry. Measured on the CPU against the same model in
float64: values within 5e-7 for both computations; gradients within 8e-6 (chunks) and 6e-6 (whole
logits) where the largest entries are ~30, within 8e-7 and 9e-7 where they are ~0.8.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor
from transformers import Qwen2Config, Qwen2ForCausalLM

from learner.config import LearnerConfig
from learner.training import engine
from learner.training.batching import MicroBatch, SequenceSample, collate
from learner.training.engine import head_logprobs, logits_chunks, sequence_logprobs
from learner.training.grpo import select_groups
from learner.training.trainer import Learner
from tests.learner.rollouts import mixed_batch

VOCAB = 320
CHUNK = 7  # the micro-batch below keeps 3 x 11 = 33 positions


def causal_lm(*, tied: bool, dtype: torch.dtype = torch.float32) -> Qwen2ForCausalLM:
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=32,
        tie_word_embeddings=tied,
    )
    return Qwen2ForCausalLM(config).to(dtype)


def micro_batch() -> MicroBatch:
    rng = np.random.default_rng(0)
    lengths = [(5, 9), (3, 4), (7, 6)]  # prompts and completions of different lengths: padding
    samples = [
        SequenceSample(
            prompt=rng.integers(0, VOCAB, size=p).astype(np.int32),
            completion=rng.integers(0, VOCAB, size=c).astype(np.int32),
            sampler_logp=np.zeros(c, np.float32),
            advantage=1.0,
            trained=True,
        )
        for p, c in lengths
    ]
    return collate(samples)


def full_logits_logprobs(
    model: torch.nn.Module, mb: MicroBatch, temperature: float, *, entropy_grad: bool = False
) -> tuple[Tensor, Tensor]:
    """The whole kept logits in fp32 at once, then log_softmax, gather and entropy."""
    out = model(
        input_ids=mb.input_ids, attention_mask=mb.attention_mask, logits_to_keep=mb.keep, use_cache=False
    )
    logsm = torch.log_softmax(out.logits.float() / temperature, dim=-1)
    logp = logsm.gather(-1, mb.targets.unsqueeze(-1)).squeeze(-1)
    probs_logsm = logsm if entropy_grad else logsm.detach()
    return logp, -(probs_logsm.exp() * probs_logsm).sum(-1)


def values_and_grads(
    model: torch.nn.Module, logprobs: tuple[Tensor, Tensor], loss_on: str
) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    logp, entropy = logprobs
    weights = torch.linspace(-1.0, 2.0, logp.numel()).view(logp.shape)
    loss = (weights * (logp if loss_on == "logp" else entropy)).sum()
    model.zero_grad(set_to_none=True)
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return logp.detach(), entropy.detach(), grads


def assert_close_to_scale(got: Tensor, want: Tensor, name: str) -> None:
    scale = float(want.abs().max())
    assert scale > 0, name
    assert float((got - want).abs().max()) <= 1e-5 * scale, name


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
@pytest.mark.parametrize("temperature", [1.0, 0.6])
@pytest.mark.parametrize("loss_on", ["logp", "entropy"])
def test_chunks_equal_the_whole_logits(tied: bool, temperature: float, loss_on: str) -> None:
    model = causal_lm(tied=tied)
    assert (model.lm_head.weight is model.model.embed_tokens.weight) == tied
    mb = micro_batch()
    assert mb.targets.numel() % CHUNK != 0
    entropy_grad = loss_on == "entropy"

    chunked = sequence_logprobs(model, mb, temperature, chunk_tokens=CHUNK, entropy_grad=entropy_grad)
    assert [t.dtype for t in chunked] == [torch.float32, torch.float32]
    assert chunked[0].shape == chunked[1].shape == mb.targets.shape
    assert chunked[1].requires_grad == entropy_grad
    logp, entropy, grads = values_and_grads(model, chunked, loss_on)
    want_logp, want_entropy, want_grads = values_and_grads(
        model, full_logits_logprobs(model, mb, temperature, entropy_grad=entropy_grad), loss_on
    )

    torch.testing.assert_close(logp, want_logp, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(entropy, want_entropy, rtol=1e-6, atol=1e-6)
    assert grads.keys() == want_grads.keys() == {n for n, _ in model.named_parameters()}
    for name, grad in grads.items():
        assert_close_to_scale(grad, want_grads[name], name)


def test_without_grad_the_values_are_the_same() -> None:
    model = causal_lm(tied=False)
    mb = micro_batch()
    with torch.no_grad():
        logp, entropy = sequence_logprobs(model, mb, 0.6, chunk_tokens=CHUNK)
        want_logp, want_entropy = full_logits_logprobs(model, mb, 0.6)
    assert not logp.requires_grad and not entropy.requires_grad
    torch.testing.assert_close(logp, want_logp, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(entropy, want_entropy, rtol=1e-6, atol=1e-6)


def test_bfloat16_logits_are_read_in_float32() -> None:
    """The chunk's bf16 logits are the whole logits' rows: the fp32 arithmetic on them agrees."""
    model = causal_lm(tied=False, dtype=torch.bfloat16)
    mb = micro_batch()
    with torch.no_grad():
        logp, entropy = sequence_logprobs(model, mb, 0.6, chunk_tokens=CHUNK)
        want_logp, want_entropy = full_logits_logprobs(model, mb, 0.6)
    assert logp.dtype == entropy.dtype == torch.float32
    torch.testing.assert_close(logp, want_logp, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(entropy, want_entropy, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("chunks", [5, 30], ids=["uneven", "some-empty"])
def test_head_gradients_of_both_inputs(chunks: int) -> None:
    """The head alone (what bench.learner measures the memory of): hidden states and weight, also
    with more chunks than rows (a rank with few tokens under ZeRO-3 makes its empty calls)."""
    torch.manual_seed(1)
    head = torch.nn.Linear(16, 50, bias=False)
    hidden = torch.randn(23, 16, requires_grad=True)
    targets = torch.randint(50, (23,))
    weights = torch.randn(23)

    def grads(logprobs: tuple[Tensor, Tensor]) -> list[Tensor]:
        logp, entropy = logprobs
        ((logp - 0.3 * entropy) * weights).sum().backward()
        out = [hidden.grad.clone(), head.weight.grad.clone()]
        hidden.grad, head.weight.grad = None, None
        return out

    got = grads(head_logprobs(head, hidden, targets, 0.8, chunks=chunks, entropy_grad=True))
    logsm = torch.log_softmax(head(hidden) / 0.8, dim=-1)
    want = grads((logsm.gather(-1, targets[:, None])[:, 0], -(logsm.exp() * logsm).sum(-1)))
    for name, g, w in zip(["hidden", "weight"], got, want, strict=True):
        assert_close_to_scale(g, w, name)


def test_chunks_of_at_most_the_size_and_as_many_as_the_busiest_rank(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu = torch.device("cpu")
    assert [logits_chunks(n, 7, device=cpu) for n in (1, 7, 8, 33)] == [1, 1, 2, 5]
    assert logits_chunks(33, 7, device=cpu, agree=True) == 5  # one rank: nothing to agree on

    def all_reduce(count: Tensor, op: object) -> None:
        assert op == torch.distributed.ReduceOp.MAX
        count.copy_(torch.maximum(count, torch.tensor(9)))  # another rank needs 9

    monkeypatch.setattr(engine, "world_size", lambda: 2)
    monkeypatch.setattr(torch.distributed, "all_reduce", all_reduce)
    assert logits_chunks(33, 7, device=cpu, agree=True) == 9
    assert logits_chunks(33, 7, device=cpu) == 5


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.parametrize("stage", [0, 2, 3])
def test_learner_step_does_not_depend_on_the_chunk(tiny_model_dir: Path, tmp_path: Path, stage: int) -> None:
    """A whole step through the DeepSpeed engine: chunks of 3 tokens give the one-chunk update."""

    def step(chunk: int) -> tuple[dict, dict[str, Tensor]]:
        cfg = LearnerConfig.model_validate(
            {
                "run_dir": tmp_path / str(chunk),
                "model": {"path": tiny_model_dir},
                "optim": {"lr": 1e-3, "eps": 1e-4},
                "batching": {"micro_batch_tokens": 40, "logits_chunk_tokens": chunk},
                "grpo": {"entropy_coef": 0.01},
                "deepspeed": {"zero_stage": stage},
            }
        )
        learner = Learner(cfg)
        metrics = learner.train_step(select_groups(mixed_batch(seed=11), drop_zero_variance=True))
        return metrics, learner.weights()

    (metrics, weights), (want_metrics, want_weights) = step(3), step(100_000)
    assert metrics["trained"]
    assert metrics["loss"] == pytest.approx(want_metrics["loss"], rel=1e-6)
    assert metrics["entropy"] == pytest.approx(want_metrics["entropy"], rel=1e-6)
    assert metrics["grad_norm"] == pytest.approx(want_metrics["grad_norm"], rel=1e-5)
    for name, value in want_weights.items():
        torch.testing.assert_close(weights[name], value, rtol=0, atol=5e-7)
