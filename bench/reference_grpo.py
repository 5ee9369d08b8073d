"""A plain GRPO loop over a recipe's math stages: the yardstick `bench.learning` holds the system to.

One process, plain PyTorch and transformers: no vLLM, DeepSpeed, ZeroMQ, dispatcher or judge
daemon. It reads the same recipe as `acerl run` (stages, batch shape, sampling, optimizer,
held-out set, warm-started model) and, for each step of each math stage:

    prompts  the stage's next batch_prompts, in the order the learner's ledger draws them
    sample   n completions of each with `model.generate`, rendered as the generators render them
    reward   1 if `judge.math_check.judge_math` says correct, called in this process
    A        (r - mean) / (std + eps) per group, std with Bessel's correction
    refill   with dynamic sampling, a group whose rewards are all equal is left out and the next
             prompt sampled in its place, up to max_zero_variance_batches x batch_prompts of them
             per step; past that they fill the batch and train nothing (as the work ledger does)
    loss     -sum A * logp over response tokens / their number, over the whole batch;
             completions cut at the length limit carry no gradient when the stage masks them
    update   one AdamW step, grad norm clipped

Held-out avg@k as the recipe's eval, before and after. Prints `reference: before=... after=...
gain=... step_s=...`.

    python -m bench.reference_grpo [--recipe R] [--threads 1] [--steps N] [key=value ...]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from judge.math_check import judge_math
from launch.recipe import Recipe, load_recipe
from learner.orchestration.prompts import PromptOrder
from learner.orchestration.schedule import Stage
from proto.judge import REWARDED_STATUSES
from proto.prompt import MathPrompt, load_prompts

ROOT = Path(__file__).resolve().parents[1]
ROWS_PER_GENERATE = 256  # bounds the KV cache of one `generate` call


@dataclass
class Completion:
    ids: list[int]  # the sampled tokens, the end-of-text token included when it was sampled
    text: str  # what the judge sees: decoded with special tokens, without the end-of-text token
    truncated: bool  # cut at the length limit


Row = tuple[list[int], Completion, float]  # prompt ids, completion, advantage


@dataclass
class ReferenceResult:
    before: float  # held-out math avg@k
    after: float
    step_s: list[float]  # per step: sampling, rewards and the update; evaluations excluded

    @property
    def gain(self) -> float:
        return self.after - self.before


def render(tokenizer: PreTrainedTokenizerBase, prompt: str) -> list[int]:
    """The token ids `generator/engine.py` samples from for a chat prompt."""
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
    )
    return tokenizer.encode(text, add_special_tokens=False)


@torch.no_grad()
def sample(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[list[int]],
    n: int,
    max_tokens: int,
    temperature: float,
    top_p: float = 1.0,
) -> list[list[Completion]]:
    """n completions of each prompt; temperature 0 is greedy. No top-k, as the generators."""
    rows = [ids for ids in prompts for _ in range(n)]
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    out: list[Completion] = []
    for start in range(0, len(rows), ROWS_PER_GENERATE):
        chunk = rows[start : start + ROWS_PER_GENERATE]
        width = max(map(len, chunk))
        # left padding: every row's last prompt token sits in the same column
        input_ids = torch.tensor([[pad] * (width - len(r)) + r for r in chunk])
        attention = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in chunk])
        sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": 0}
        generated = model.generate(
            input_ids=input_ids,
            attention_mask=attention,
            max_new_tokens=max_tokens,
            eos_token_id=eos,
            pad_token_id=pad,
            **(sampling if temperature > 0 else {"do_sample": False}),
        )
        for row in generated[:, width:].tolist():
            stopped = eos in row
            ids = row[: row.index(eos) + 1] if stopped else row
            text = tokenizer.decode(ids[:-1] if stopped else ids, skip_special_tokens=False)
            out.append(Completion(ids, text, truncated=not stopped))
    return [out[i : i + n] for i in range(0, len(out), n)]


def reward(completion: Completion, answer: str) -> float:
    return float(judge_math(completion.text, answer).status in REWARDED_STATUSES)


def group_advantages(rewards: list[float], eps: float) -> list[float] | None:
    """(r - mean) / (std + eps); None for a group without spread (it is dropped)."""
    if len(set(rewards)) < 2:
        return None
    mean, std = statistics.fmean(rewards), statistics.stdev(rewards)  # stdev: Bessel's correction
    return [(r - mean) / (std + eps) for r in rewards]


def policy_loss(model: PreTrainedModel, rows: list[Row], temperature: float, pad: int) -> torch.Tensor:
    """Token-level mean of -A * logp over the trained response tokens of (prompt, completion, A)."""
    width = max(len(p) + len(c.ids) for p, c, _ in rows)
    input_ids = torch.full((len(rows), width), pad)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    mask = torch.zeros((len(rows), width - 1))  # position t predicts token t + 1
    advantages = torch.tensor([a for _, _, a in rows]).unsqueeze(1)
    for i, (prompt, completion, _) in enumerate(rows):
        end = len(prompt) + len(completion.ids)
        input_ids[i, :end] = torch.tensor(prompt + completion.ids)
        attention[i, :end] = 1
        mask[i, len(prompt) - 1 : end - 1] = 1.0
    logits = model(input_ids=input_ids, attention_mask=attention).logits[:, :-1].float() / temperature
    logp = torch.log_softmax(logits, dim=-1).gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    return -(advantages * logp * mask).sum() / mask.sum()


def evaluate(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, recipe: Recipe) -> float:
    """avg@k on the recipe's held-out math set, sampled as the run's evaluation samples it."""
    e, stages = recipe.learner.eval, recipe.learner.schedule.stages
    spec = next(s for s in e.sets if s.task == "math")
    prompts = load_prompts(spec.prompts, "math")[: spec.limit]
    max_tokens = e.max_tokens or max(s.max_response_tokens for s in stages if s.kind == "math")
    rendered = [render(tokenizer, p.prompt) for p in prompts]
    groups = sample(model, tokenizer, rendered, e.k, max_tokens, e.temperature, e.top_p)
    return statistics.fmean(
        reward(c, p.answer) for p, group in zip(prompts, groups, strict=True) for c in group
    )


def group_rows(
    ids: list[int], group: list[Completion], rewards: list[float], recipe: Recipe, stage: Stage
) -> list[Row] | None:
    """What trains of one group; None for a group without spread (dynamic sampling leaves it out)."""
    advantages = group_advantages(rewards, recipe.learner.grpo.adv_eps)
    if advantages is None:
        return None
    return [
        (ids, completion, advantage)
        for completion, advantage in zip(group, advantages, strict=True)
        if not (stage.mask_truncated and completion.truncated)
    ]


def sample_batch(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    order: PromptOrder,
    prompts: dict[str, MathPrompt],
    recipe: Recipe,
    stage: Stage,
) -> tuple[list[Row], list[float]]:
    """One step's batch: batch_prompts groups, sampled in rounds while dynamic sampling leaves
    flat groups out; returns what trains and every reward sampled."""
    schedule = recipe.learner.schedule
    may_leave_out = 0.0
    if schedule.dynamic_sampling:
        may_leave_out = schedule.max_zero_variance_batches * stage.batch_prompts
    n, temperature = stage.sampling_at(order.epoch)
    rows: list[Row] = []
    rewards: list[float] = []
    filled = left_out = 0
    while filled < stage.batch_prompts:
        batch: list[MathPrompt] = []
        while len(batch) < stage.batch_prompts - filled:
            chosen = order.next()
            if chosen is None:
                order.new_epoch()
            else:
                batch.append(prompts[chosen])
        rendered = [render(tokenizer, stage.prompt_template.format(prompt=p.prompt)) for p in batch]
        groups = sample(model, tokenizer, rendered, n, stage.max_response_tokens, temperature, stage.top_p)
        for prompt, ids, group in zip(batch, rendered, groups, strict=True):
            group_rewards = [reward(c, prompt.answer) for c in group]
            rewards += group_rewards
            trained = group_rows(ids, group, group_rewards, recipe, stage)
            if trained is None and left_out < may_leave_out:
                left_out += 1
                continue
            filled += 1
            rows += trained or []
    return rows, rewards


def run_reference(
    recipe: Recipe,
    *,
    threads: int = 1,
    max_steps: int | None = None,
    on_step: Callable[[int, int, float], None] | None = None,
) -> ReferenceResult:
    """The recipe's math stages from its warm-started model; `on_step(step, steps, accuracy)`."""
    cfg, o = recipe.learner, recipe.learner.optim
    torch.set_num_threads(threads)
    torch.manual_seed(cfg.seed)
    tokenizer = AutoTokenizer.from_pretrained(cfg.model.path)
    model = AutoModelForCausalLM.from_pretrained(cfg.model.path, dtype=torch.float32)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=o.lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay
    )
    before = evaluate(model, tokenizer, recipe)
    stages = [(i, s) for i, s in enumerate(cfg.schedule.stages) if s.kind == "math"]
    total = min(sum(s.steps for _, s in stages), max_steps or sys.maxsize)
    step_s: list[float] = []
    for index, stage in stages:
        prompts = {p.id: p for p in load_prompts(stage.prompts, "math")}
        order = PromptOrder(list(prompts), seed=f"{cfg.schedule.seed}/{index}")  # the ledger's order
        for group in optimizer.param_groups:
            group["lr"] = stage.learning_rate
        for _ in range(min(stage.steps, total - len(step_s))):
            started = time.perf_counter()
            temperature = stage.sampling_at(order.epoch)[1]
            rows, rewards = sample_batch(model, tokenizer, order, prompts, recipe, stage)
            if rows:  # else every group was flat: nothing to learn from this batch
                policy_loss(model, rows, temperature or 1.0, tokenizer.pad_token_id).backward()
                if o.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), o.grad_clip)
                optimizer.step()
                optimizer.zero_grad()
            step_s.append(time.perf_counter() - started)
            if on_step is not None:
                on_step(len(step_s), total, statistics.fmean(rewards))
    return ReferenceResult(before, evaluate(model, tokenizer, recipe), step_s)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--recipe", type=Path, default=ROOT / "launch/recipes/tiny.yaml")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--steps", type=int, help="stop after this many steps (a quick check)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides of the recipe")
    args = parser.parse_args()
    recipe = load_recipe(args.recipe, args.overrides)
    if not (recipe.learner.model.path / "config.json").exists():
        raise SystemExit(f"no model at {recipe.learner.model.path}: build it first (acerl run builds it)")
    result = run_reference(
        recipe,
        threads=args.threads,
        max_steps=args.steps,
        on_step=lambda step, steps, acc: print(f"step {step}/{steps} accuracy {acc:.3f}", flush=True),
    )
    print(
        f"reference: before={result.before:.3f} after={result.after:.3f} gain={result.gain:+.3f} "
        f"step_s={statistics.fmean(result.step_s):.2f}"
    )


if __name__ == "__main__":
    main()
