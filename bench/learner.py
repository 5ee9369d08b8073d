"""The learner's GRPO step against a plain DeepSpeed forward/backward/step loop, side by side.

Both run in this process on the same model (two engines from the same weights and the same
DeepSpeed config) and the same fixed batch. The plain loop gets the learner's micro-batches
ready-made and computes only -A * logp over the response tokens; the learner's step does
everything it does in training (group selection, advantages, bucketing, the clipped token
loss, entropy, sampler mismatch, metrics). Timings alternate between the two, medians are
compared. Last line: `learner: step_ratio=... tokens_per_s=...` (target: step_ratio <= 1.1).

    python -m bench.learner [--hidden 128 --layers 2 --prompts 16 --n 8 --max-response 256]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from learner.config import LearnerConfig
from learner.tiny.model import write_tiny_model
from learner.training.engine import PolicyEngine, deepspeed_config, ensure_distributed, load_model
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
    print(f"learner: step_ratio={learner_s / plain_s:.3f} tokens_per_s={tokens / learner_s:.0f}")


if __name__ == "__main__":
    main()
