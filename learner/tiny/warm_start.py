"""A short supervised warm start: the tiny default's stand-in for a distilled reasoning model.

Trains the policy on worked solutions (`"solution"` of the tiny tasks) in the chat format the
generators use, with the loss on response tokens only, for a fixed small number of steps: RL
should start from a model that solves some problems, not most.
`python -m learner.tiny.warm_start --model DIR --data A.jsonl [B.jsonl ...] --out DIR --steps N`
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import torch
from rich.progress import Progress
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase


def encode_example(tokenizer: PreTrainedTokenizerBase, prompt: str, solution: str) -> tuple[list[int], int]:
    """(token ids, index where the response starts) in the chat format the generators sample in."""
    prefix = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
    )
    prompt_ids = tokenizer(prefix, add_special_tokens=False)["input_ids"]
    response_ids = tokenizer(solution, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return prompt_ids + response_ids, len(prompt_ids)


def warm_start(
    model_dir: Path,
    data: list[Path],
    out: Path,
    *,
    steps: int,
    batch_size: int = 32,
    lr: float = 3e-3,
    seed: int = 0,
    threads: int = 1,
) -> Path:
    # The tiny model's ops are too small to gain from threads, and on a busy machine extra
    # threads only spin against the other processes (measured: several times slower).
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    rng = random.Random(seed)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    examples = []
    for path in data:
        for line in path.read_text().splitlines():
            record = json.loads(line)
            examples.append(encode_example(tokenizer, record["prompt"], record["solution"]))
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0 - s / max(1, steps))
    model.train()
    with Progress(transient=True) as progress:
        task = progress.add_task("warm start", total=steps)
        for _ in range(steps):
            batch = rng.sample(examples, min(batch_size, len(examples)))
            width = max(len(ids) for ids, _ in batch)
            input_ids = torch.full((len(batch), width), tokenizer.pad_token_id)
            labels = torch.full((len(batch), width), -100)
            attention = torch.zeros((len(batch), width), dtype=torch.long)
            for row, (ids, start) in enumerate(batch):
                input_ids[row, : len(ids)] = torch.tensor(ids)
                labels[row, start : len(ids)] = torch.tensor(ids[start:])
                attention[row, : len(ids)] = 1
            loss = model(input_ids=input_ids, attention_mask=attention, labels=labels).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad()
            progress.update(task, advance=1, description=f"warm start loss {loss.item():.3f}")
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--data", type=Path, nargs="+", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    warm_start(
        args.model,
        args.data,
        args.out,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
    )
    print(args.out)


if __name__ == "__main__":
    main()
