"""The learner's steps on as many ranks as torchrun starts, on fixed batches; rank 0 writes the
weights after them. `bench.learner` (ranks2_max_diff) and the learner's tests compare what 1 and
2 ranks give; with --save-after / --resume it checks a checkpoint round on N ranks.

    python -m torch.distributed.run --standalone --nproc-per-node 2 -m bench.learner_ranks \\
        --model DIR --run-dir DIR --out weights.pt [--steps 1] [--zero-stage 0] \\
        [--save-after K] [--resume]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import torch

from bench.learner import fixed_batch
from learner.config import LearnerConfig
from learner.training.grpo import select_groups
from learner.training.trainer import Learner
from proto.logs import configure_logging
from proto.rollout import RolloutGroup

ROOT = Path(__file__).resolve().parents[1]


def fixed_groups(vocab: int, step: int) -> list[RolloutGroup]:
    return fixed_batch(vocab, prompts=6, n=4, max_response=24, seed=100 + step)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.learner_ranks")
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True, help="rank 0 writes the weights here")
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--zero-stage", type=int, default=0)
    parser.add_argument("--micro-batch-tokens", type=int, default=64)
    parser.add_argument("--save-after", type=int, help="write a checkpoint after this many steps")
    parser.add_argument("--resume", action="store_true", help="start from the run's newest checkpoint")
    args = parser.parse_args(argv)
    configure_logging("bench.learner_ranks", "warning")
    ranks = int(os.environ.get("WORLD_SIZE", "1"))
    cfg = LearnerConfig.model_validate(
        {
            "run_dir": args.run_dir,
            "ranks": ranks,
            "torch_threads": 1,
            "model": {"path": args.model, "dtype": "float32"},
            "optim": {"lr": 1e-3, "eps": 1e-4},
            "batching": {"micro_batch_tokens": args.micro_batch_tokens},
            "deepspeed": {"zero_stage": args.zero_stage},
            "checkpoint": {"hf_model": False},
        }
    )
    learner = Learner(cfg)
    if args.resume and learner.resume() is None:
        raise SystemExit(f"{args.run_dir}: no checkpoint to resume from")
    if not learner.ranks.leads:
        learner.follow()
        return 0
    try:
        vocab = learner.engine.module.config.vocab_size
        while learner.step < args.steps:
            batch = select_groups(fixed_groups(vocab, learner.step), drop_zero_variance=True)
            record = learner.train_step(batch)
            assert record["ranks"] == ranks, record
            if args.save_after is not None and learner.step == args.save_after:
                learner.save_checkpoint()
        torch.save(learner.weights(), args.out)
    finally:
        learner.release()
    return 0


def run_on_ranks(ranks: int, *args: str, timeout_s: float = 600.0) -> subprocess.CompletedProcess:
    """This module under torchrun on `ranks` CPU processes; raises with its output when it fails."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1"]
    command += [f"--nproc-per-node={ranks}", "-m", "bench.learner_ranks", *args]
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, env=env, cwd=ROOT)
    if done.returncode != 0:
        output = f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        raise RuntimeError(f"{' '.join(command)} exited {done.returncode}:\n{output}")
    return done


if __name__ == "__main__":
    sys.exit(main())
