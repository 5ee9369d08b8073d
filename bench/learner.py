"""The learner's GRPO step against a plain DeepSpeed forward/backward/step loop, side by side.

Both run in this process on the same model (two engines from the same weights and the same
DeepSpeed config) and the same fixed batch. The plain loop gets the learner's micro-batches
ready-made and computes only -A * logp over the response tokens; the learner's step does
everything it does in training (group selection, advantages, bucketing, the clipped token
loss, entropy, sampler mismatch, metrics). Timings alternate between the two, medians are
compared.

Then the memory of log-probs and entropy at a real vocabulary: 8,192 response tokens through a
151,936 x 896 head (Qwen2.5-0.5B's), forward and backward of a loss on both, as the learner
computes them (`head_logprobs`, in chunks of the default `batching.logits_chunk_tokens` or of
`--logits-chunk-tokens`). Its peak extra memory over the size of the whole fp32 logits (8,192 x
151,936 x 4 bytes, never allocated) is `logits_peak_ratio` (target: <= 0.25). It runs in a fresh
process; on the CPU the figure is the rise of its peak resident set, on a GPU the peak allocated
by torch.

Then `ranks2_max_diff`: the largest parameter difference after one step on 2 CPU ranks and on 1
with the same global batch (target: <= 1e-6).

Last line: `learner: step_ratio=... tokens_per_s=... ranks2_max_diff=... logits_peak_ratio=...`
(target: step_ratio <= 1.1).

    python -m bench.learner [--hidden 128 --layers 2 --prompts 16 --n 8 --max-response 256]
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

from learner.config import BatchingConfig, LearnerConfig
from learner.tiny.model import write_tiny_model
from learner.training.engine import (
    PolicyEngine,
    deepspeed_config,
    ensure_distributed,
    head_logprobs,
    load_model,
    logits_chunks,
)
from learner.training.grpo import select_groups
from learner.training.trainer import Learner
from proto.logs import configure_logging
from proto.rollout import Completion, RolloutGroup


def fixed_batch(vocab: int, prompts: int, n: int, max_response: int, seed: int = 0) -> list[RolloutGroup]:
    rng = np.random.default_rng(seed)
    groups = []
    for p in range(prompts):
        prompt = rng.integers(5, vocab, size=int(rng.integers(16, 96))).astype(np.int32)
        rewards = rng.integers(0, 2, size=n).astype(float)
        rewards[0], rewards[1] = 0.0, 1.0  # every group carries signal: the whole batch trains
        completions = []
        for r in rewards:
            length = int(rng.integers(8, max_response + 1))
            truncated = length == max_response
            completions.append(
                Completion(
                    token_ids=rng.integers(5, vocab, size=length).astype(np.int32),
                    logprobs=(-rng.uniform(0.5, 8.0, size=length)).astype(np.float32),
                    finish_reason="length" if truncated else "stop",
                    truncated=truncated,
                    reward=float(r),
                    judge_status="correct" if r else "wrong_answer",
                )
            )
        groups.append(
            RolloutGroup(
                work_id=f"bench-{p}",
                kind="math",
                stage=0,
                policy_version=0,
                temperature=1.0,
                generator_id="bench",
                prompt_token_ids=prompt,
                completions=completions,
            )
        )
    return groups


class PlainLoop:
    """The baseline: a DeepSpeed engine and the simplest policy-gradient loss over given tensors."""

    def __init__(self, cfg: LearnerConfig) -> None:
        import deepspeed

        ensure_distributed()
        model = load_model(cfg.model.path, cfg)
        self.engine, *_ = deepspeed.initialize(
            model=model, model_parameters=list(model.parameters()), config=deepspeed_config(cfg)
        )

    def step(self, micro_batches: list, loss_tokens: int) -> None:
        for mb in micro_batches:
            out = self.engine(
                input_ids=mb.input_ids,
                attention_mask=mb.attention_mask,
                logits_to_keep=mb.keep,
                use_cache=False,
            )
            logp = torch.log_softmax(out.logits.float(), -1).gather(-1, mb.targets.unsqueeze(-1)).squeeze(-1)
            loss = -(mb.advantages * logp * mb.loss_mask).sum() / loss_tokens
            self.engine.backward(loss, scale_wrt_gas=False)
        self.engine.step()


def logits_peak_bytes(tokens: int, vocab: int, hidden: int, chunk_tokens: int) -> int:
    """Peak memory of log-probs and entropy of `tokens` positions through a `vocab` x `hidden`
    head, forward and backward of a loss on both. Counted: everything above the inputs (hidden
    states, targets, loss weights), the head's weight and both gradients, allocated beforehand
    as a training step holds them. On the CPU: the process's peak resident set after the run over
    its resident set before it; run it in a fresh process (the peak only rises)."""
    torch.manual_seed(0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    head = torch.nn.Linear(hidden, vocab, bias=False, device=device)
    states = torch.randn(tokens, hidden, device=device, requires_grad=True)
    targets = torch.randint(vocab, (tokens,), device=device)
    weights = torch.randn(tokens, device=device)

    def loss_backward(rows: int) -> None:
        chunks = logits_chunks(rows, chunk_tokens, device=device)
        logp, entropy = head_logprobs(
            head, states[:rows], targets[:rows], 0.7, chunks=chunks, entropy_grad=True
        )
        ((logp - 0.01 * entropy) * weights[:rows]).sum().backward()

    # Kernels and thread pools are set up and both gradients allocated. Its own peak (a temporary
    # of the weight's size) stays below the measured run's, which holds one too.
    loss_backward(8)
    head.weight.grad.zero_()
    states.grad.zero_()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _resident_bytes()
    loss_backward(tokens)
    if device.type == "cuda":
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base  # KiB on Linux


def _resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()


def logits_peak_ratio(
    chunk_tokens: int, tokens: int = 8192, vocab: int = 151_936, hidden: int = 896
) -> float:
    """`logits_peak_bytes` in a fresh process, over the size of the whole fp32 logits."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        peak = pool.submit(logits_peak_bytes, tokens, vocab, hidden, chunk_tokens).result()
    full = tokens * vocab * 4
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(
        f"log-probs and entropy of {tokens} tokens, vocab {vocab}, hidden {hidden}, chunks of {chunk_tokens} "
        f"({device}): peak {peak / 2**20:.0f} MiB, whole fp32 logits {full / 2**20:.0f} MiB"
    )
    return peak / full


def ranks2_max_diff(model_dir: Path, tmp: Path) -> float:
    """The largest absolute parameter difference after one learner step on 2 gloo ranks and on
    1, with the same global batch (fp32, ZeRO-0; each run a torchrun of bench.learner_ranks)."""
    from bench.learner_ranks import run_on_ranks

    weights = {}
    for ranks in (1, 2):
        out = tmp / f"ranks{ranks}.pt"
        run_dir = str(tmp / f"ranks{ranks}")
        run_on_ranks(ranks, "--model", str(model_dir), "--run-dir", run_dir, "--out", str(out))
        weights[ranks] = torch.load(out, weights_only=True)
    return max(float((weights[1][name] - value).abs().max()) for name, value in weights[2].items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--max-response", type=int, default=256)
    parser.add_argument("--micro-batch-tokens", type=int, default=8192)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--logits-chunk-tokens", type=int, default=BatchingConfig().logits_chunk_tokens)
    args = parser.parse_args()
    configure_logging("bench", "warning")

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = write_tiny_model(Path(tmp) / "model", hidden=args.hidden, layers=args.layers)
        cfg = LearnerConfig.model_validate(
            {
                "run_dir": tmp,
                "model": {"path": model_dir},
                "optim": {"lr": 1e-6},
                "batching": {"micro_batch_tokens": args.micro_batch_tokens},
            }
        )
        learner = Learner(cfg, PolicyEngine(cfg))
        plain = PlainLoop(cfg)
        groups = fixed_batch(learner.engine.module.config.vocab_size, args.prompts, args.n, args.max_response)
        batch = select_groups(groups, drop_zero_variance=cfg.grpo.drop_zero_variance)
        prepared = learner.prepare(batch)
        tokens = sum(s.length for s in prepared.samples)
        params = sum(p.numel() for p in learner.engine.module.parameters())
        print(
            f"model: hidden {args.hidden}, {args.layers} layers, {params / 1e6:.2f}M parameters; "
            f"batch: {len(groups)} groups x {args.n}, {tokens} tokens "
            f"({prepared.loss_tokens} with gradient), "
            f"{len(prepared.micro_batches)} micro-batches of <= {args.micro_batch_tokens} tokens; "
            f"threads {torch.get_num_threads()}"
        )
        ranks_diff = ranks2_max_diff(model_dir, Path(tmp))
        print(f"one step on 2 ranks against 1 rank: largest parameter difference {ranks_diff:.2e}")

        times: dict[str, list[float]] = {"learner": [], "plain": []}
        for i in range(args.warmup + args.iters):
            for name in ("learner", "plain") if i % 2 == 0 else ("plain", "learner"):
                started = time.perf_counter()
                if name == "learner":
                    metrics = learner.train_step(batch)
                    assert metrics["trained"]
                else:
                    plain.step(prepared.micro_batches, prepared.loss_tokens)
                if i >= args.warmup:
                    times[name].append(time.perf_counter() - started)
        started = time.perf_counter()
        learner.weights()
        snapshot_s = time.perf_counter() - started

    learner_s, plain_s = statistics.median(times["learner"]), statistics.median(times["plain"])
    for name in ("plain", "learner"):
        values = times[name]
        median, low, high = statistics.median(values), min(values), max(values)
        print(f"{name:8s} step: median {median:.3f} s  min {low:.3f}  max {high:.3f}")
    print(f"ratio of the fastest steps: {min(times['learner']) / min(times['plain']):.3f}")
    print(f"weight snapshot for publishing: {snapshot_s * 1000:.1f} ms")
    ratio = logits_peak_ratio(args.logits_chunk_tokens)
    print(
        f"learner: step_ratio={learner_s / plain_s:.3f} tokens_per_s={tokens / learner_s:.0f} "
        f"ranks2_max_diff={ranks_diff:.2e} logits_peak_ratio={ratio:.3f}"
    )


if __name__ == "__main__":
    main()
