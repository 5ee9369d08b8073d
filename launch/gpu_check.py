"""`launch/gpu-check.sh`: the CUDA paths of the system on one GPU, in a few minutes.

    learner   DeepSpeed in bf16 on one rank, 3 GRPO steps of the tiny model on fixed batches:
              step time, tokens/s, peak memory, the weights gathered for publishing, and the
              log-prob mismatch between transformers' sampling (KV cache, bf16) and the learner
    run       `acerl run` of the tiny default for 3 steps on this GPU, the learner and one
              generator sharing it (placement.colocate, a small vLLM memory share), weights
              reloaded the way GPUs reload them: the sampler-vs-learner mismatch, tokens/s and
              the update time per step, from the run's metrics

Each part runs if its packages are installed (learner: deepspeed; run: also vllm and zmq) and
says what it skipped. On a machine without a GPU it says so and exits 2.

    launch/gpu-check.sh [--steps 3] [--warm-start-steps 300] [--out DIR]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console

ROOT = Path(__file__).resolve().parent.parent
console = Console(stderr=True)
PARTS = {"learner": ["deepspeed", "msgpack", "structlog"], "run": ["deepspeed", "vllm", "zmq", "msgpack"]}


def missing(part: str) -> list[str]:
    return [name for name in PARTS[part] if importlib.util.find_spec(name) is None]


def build_tiny(warm_start_steps: int) -> Path:
    from launch.tiny_default import TinyPrepare, build, cache_dir

    tiny = TinyPrepare(warm_start_steps=warm_start_steps)
    build(tiny, console)
    return cache_dir(tiny) / "warm_start"


def sampler_mismatch(model_dir: Path, learner: Any, prompts: int = 8, tokens: int = 32) -> dict[str, float]:
    """Sample with transformers in bf16 (KV cache), then score the samples with the learner's
    forward: mean and max |log-prob difference| per sampled token."""
    import torch
    from transformers import AutoModelForCausalLM

    from learner.training.batching import SequenceSample, collate

    sampler = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16).cuda().eval()
    generator = torch.Generator(device="cuda").manual_seed(0)
    vocab = sampler.config.vocab_size
    prompt = torch.randint(5, vocab, (prompts, 12), device="cuda", generator=generator)
    with torch.no_grad():
        out = sampler.generate(
            prompt, attention_mask=torch.ones_like(prompt), do_sample=True, max_new_tokens=tokens,
            min_new_tokens=tokens, temperature=1.0, top_k=0, top_p=1.0, output_logits=True,
            return_dict_in_generate=True,
            pad_token_id=sampler.config.pad_token_id or 0,
        )  # fmt: skip
    new = out.sequences[:, prompt.shape[1] :]
    scores = torch.stack(out.logits, dim=1).float().log_softmax(-1)  # [B, T, V], before any processor
    sampled = scores.gather(-1, new.unsqueeze(-1)).squeeze(-1)
    ids, completions, logps = prompt.cpu().int().numpy(), new.cpu().int().numpy(), sampled.cpu().numpy()
    samples = [SequenceSample(ids[i], completions[i], logps[i], 0.0, False) for i in range(prompts)]
    mb = collate(samples).to(learner.engine.device)
    with torch.no_grad():
        logp, _ = learner.engine.logprobs(mb, 1.0)
    delta = ((logp - mb.sampler_logp).abs() * mb.valid_mask)[mb.valid_mask > 0]
    return {"mismatch_mean": float(delta.mean()), "mismatch_max": float(delta.max())}


def check_learner(model_dir: Path, steps: int, out: Path) -> dict[str, Any]:
    import torch

    from bench.learner import fixed_batch
    from learner.config import LearnerConfig
    from learner.training.grpo import select_groups
    from learner.training.trainer import Learner

    cfg = LearnerConfig.model_validate(
        {
            "run_dir": out / "learner",
            "model": {"path": model_dir, "dtype": "bfloat16", "gradient_checkpointing": True},
            "optim": {"lr": 1e-5},
            "batching": {"micro_batch_tokens": 8192, "logits_chunk_tokens": 512},
        }
    )
    learner = Learner(cfg)
    mismatch = sampler_mismatch(model_dir, learner)  # before any step: the same weights on both sides
    vocab = learner.engine.module.config.vocab_size
    records = []
    torch.cuda.reset_peak_memory_stats()
    for step in range(steps):
        batch = select_groups(fixed_batch(vocab, 32, 8, 256, seed=step), drop_zero_variance=True)
        torch.cuda.synchronize()
        records.append(learner.train_step(batch))
    torch.cuda.synchronize()
    started = time.perf_counter()
    weights = learner.weights()
    gather_s = time.perf_counter() - started
    return {
        "step_s": [round(r["step_s"], 3) for r in records],
        "tokens_per_s": round(statistics.median(r["tokens_per_s"] for r in records), 1),
        "loss": [round(r["loss"], 5) for r in records],
        "grad_norm": [round(r["grad_norm"], 4) for r in records],
        "peak_memory_gb": round(torch.cuda.max_memory_allocated() / 1e9, 3),
        "weights_gather_s": round(gather_s, 4),
        "weights_mb": round(sum(w.numel() * w.element_size() for w in weights.values()) / 1e6, 2),
        **{k: round(v, 6) for k, v in mismatch.items()},
    }


def check_run(steps: int, warm_start_steps: int, out: Path) -> dict[str, Any]:
    run_dir = out / "run"
    command = [
        sys.executable, "-m", "launch.cli", "run", "--gpus", "1", "--run-dir", str(run_dir),
        "--max-steps", str(steps), f"tiny.warm_start_steps={warm_start_steps}", "placement.colocate=true",
        "learner.model.dtype=bfloat16", "generator.engine.gpu_memory_utilization=0.25",
        "learner.eval.sets=[]", "learner.checkpoint.every_steps=0",
    ]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=480)
    (out / "run.log").write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        return {"error": f"exit {done.returncode}", "tail": (done.stdout + done.stderr)[-2000:]}
    train = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in train if r.get("kind") == "train"]
    return {
        "steps": len(train),
        "logprob_mismatch": [r.get("logprob_mismatch") for r in train],
        "logprob_mismatch_max": [r.get("logprob_mismatch_max") for r in train],
        "tokens_per_s": [r.get("tokens_per_s") for r in train],
        "step_s": [r.get("step_s") for r in train],
        "publish_s": [r.get("publish_s") for r in train],
        "reload_s": [r.get("reload_s") for r in train],
        "plan": json.loads((run_dir / "plan.json").read_text()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="launch/gpu-check.sh", description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warm-start-steps", type=int, default=300, help="of the tiny default's build")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "gpu-check")
    args = parser.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        console.print(
            "gpu-check: no GPU visible (torch.cuda.is_available() is False, torch "
            f"{torch.__version__}, CUDA build {torch.version.cuda}); it checks the CUDA paths "
            "and has nothing to check here"
        )
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__}
    console.print(f"gpu-check on {report['gpu']}")
    started = time.perf_counter()
    model_dir = build_tiny(args.warm_start_steps)
    report["build_s"] = round(time.perf_counter() - started, 1)
    for part, check in (
        ("learner", lambda: check_learner(model_dir, args.steps, args.out)),
        ("run", lambda: check_run(args.steps, args.warm_start_steps, args.out)),
    ):
        absent = missing(part)
        if absent:
            report[part] = {"skipped": f"not installed: {', '.join(absent)}"}
        else:
            started = time.perf_counter()
            try:
                report[part] = check()
            except Exception as exc:  # one part's failure is reported; the other still runs
                report[part] = {"error": f"{type(exc).__name__}: {exc}"}
            report[part]["seconds"] = round(time.perf_counter() - started, 1)
        console.print(f"[bold]{part}[/]: {json.dumps(report[part])}")
    (args.out / "gpu-check.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report))
    return 0 if all("error" not in report[p] for p in PARTS) else 1


if __name__ == "__main__":
    sys.exit(main())
