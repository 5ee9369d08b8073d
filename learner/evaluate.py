"""Held-out evaluation of one set of prompts, in training or alone (`python -m learner eval`).

Alone, this process is what the learner is in training, minus the training: a dispatcher that
generators connect to (started by `acerl eval`, or by hand on other machines), serving one
evaluation round at the weights the generators started from (version 0). Its prompts go out in
the template and with the stop strings of the recipe's last stage of their task, as training
sends them, and are scored by the same judge.

    python -m learner eval --config RUN.yaml --prompts FILE [--task math|code] [--k K]
        [--temperature T] [--top-p P] [--max-tokens M] [--limit N] --out DIR [key=value ...]

It writes DIR/per_prompt.jsonl and DIR/summary.json (learner/orchestration/eval_results.py), and
while it runs DIR/progress.json: how many prompts are scored.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

from learner.config import EvalConfig, RunConfig
from learner.on_policy import OnPolicyClock
from learner.orchestration.dispatcher import Dispatcher
from learner.orchestration.eval_results import write_results
from learner.orchestration.evaluation import EvalRound
from learner.orchestration.schedule import Stage
from learner.orchestration.work_ledger import WorkLedger
from proto.prompt import Kind, Prompt, PromptSetError, load_prompts
from proto.ready import announce_ready
from proto.work import SamplingParams

log = structlog.get_logger("learner.evaluate")
PROGRESS_FILE = "progress.json"


def stage_like(stages: list[Stage], task: str, at: int) -> Stage | None:
    """The stage whose prompt template and stop strings an evaluation of `task` after stage `at`
    uses, as its training does: the last stage of that task up to `at`, else the first after."""
    of_task = [index for index, stage in enumerate(stages) if stage.kind == task]
    if not of_task:
        return None
    up_to = [index for index in of_task if index <= at]
    return stages[up_to[-1] if up_to else of_task[0]]


def default_max_tokens(cfg: RunConfig, task: str) -> int:
    """eval.max_tokens, else the longest response the schedule allows for `task` (any task if none)."""
    stages = cfg.schedule.stages
    longest = max((s.max_response_tokens for s in stages if s.kind == task), default=None)
    return cfg.eval.max_tokens or longest or max(s.max_response_tokens for s in stages)


def new_round(
    cfg: RunConfig,
    tag: str,
    task: Kind,
    prompts: list[Prompt],
    sampling: SamplingParams,
    on_policy: OnPolicyClock,
    stage: int,
) -> EvalRound:
    like = stage_like(cfg.schedule.stages, task, stage)
    return EvalRound(
        tag,
        task,
        prompts,
        sampling.model_copy(update={"stop": like.stop if like is not None else []}),
        on_policy=on_policy,
        stage=stage,
        lease_s=cfg.schedule.lease_s,
        template=like.prompt_template if like is not None else "{prompt}",
        max_attempts=cfg.schedule.max_attempts,
    )


def score(
    dispatcher: Dispatcher,
    evaluation: EvalRound,
    eval_cfg: EvalConfig,
    directory: Path,
    settings: dict[str, Any],
    *,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Run `evaluation` through the dispatcher to its end and write its results; the summary.

    The deadline grows with what the round may generate (EvalConfig.round_timeout_s)."""
    sampling = evaluation.sampling
    timeout_s = eval_cfg.round_timeout_s(len(evaluation.prompts), sampling.n, sampling.max_tokens)
    started = time.perf_counter()
    dispatcher.evaluate(evaluation, timeout_s, progress=progress)
    elapsed = time.perf_counter() - started
    summary = write_results(
        directory, evaluation, {**settings, "timeout_s": round(timeout_s, 1), "eval_s": round(elapsed, 2)}
    )
    log.info("evaluated", tag=evaluation.tag, prompts=summary["prompts"], seconds=round(elapsed, 1))
    return summary


def progress_writer(path: Path, total: int) -> Callable[[int], None]:
    """A `progress` callback that keeps {"scored", "total"} in `path`, for whoever shows a bar."""

    def write(scored: int) -> None:
        announce_ready(path, scored=scored, total=total)  # the same atomic small-JSON write

    return write


def infer_task(path: Path) -> Kind:
    """math if the first record has an answer; code if it has tests or a test program."""
    from proto.prompt import records

    for where, record in records(path):
        if isinstance(record, dict) and "answer" in record:
            return "math"
        if isinstance(record, dict) and ("tests" in record or "test_program" in record):
            return "code"
        raise PromptSetError(f"{where}: neither an answer nor tests: say --task math or --task code")
    raise PromptSetError(f"prompt set {path} holds no records")


def evaluate_alone(cfg: RunConfig, args: argparse.Namespace, ready_file: Path | None) -> dict[str, Any]:
    from proto.curve import CurveServerKeys

    task: Kind = args.task or infer_task(args.prompts)
    prompts = load_prompts(args.prompts, task)[: args.limit]
    k = args.k or cfg.eval.k
    temperature = cfg.eval.temperature if args.temperature is None else args.temperature
    if temperature == 0 and k > 1:
        raise PromptSetError(f"--k {k} at temperature 0: greedy samples are all the same; use --k 1")
    sampling = SamplingParams(
        n=k,
        max_tokens=args.max_tokens or default_max_tokens(cfg, task),
        temperature=temperature,
        top_p=cfg.eval.top_p if args.top_p is None else args.top_p,
        seed=args.seed,
    )
    on_policy = OnPolicyClock(0)  # the generators sample with the weights they started from
    ledger = WorkLedger.evaluation_only(cfg.schedule, on_policy)
    curve = None
    if cfg.dispatch.secret_key is not None:
        curve = CurveServerKeys(cfg.dispatch.secret_key, cfg.dispatch.clients_dir)
    dispatcher = Dispatcher(
        ledger,
        cfg.dispatch.address,
        curve=curve,
        heartbeat_timeout_s=cfg.dispatch.heartbeat_timeout_s,
        reconcile_grace_s=cfg.dispatch.reconcile_grace_s,
    )
    log.info("dispatcher_ready", address=dispatcher.address, prompts=len(prompts), task=task)
    dispatcher.start()
    announce_ready(ready_file, dispatch=dispatcher.address)
    last_stage = len(cfg.schedule.stages) - 1
    evaluation = new_round(cfg, f"{args.prompts.stem}/{task}", task, prompts, sampling, on_policy, last_stage)
    settings = {
        "model": str(cfg.model.path) if cfg.model.path else None,
        "prompts_file": str(args.prompts),
        "task": task,
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "max_tokens": sampling.max_tokens,
    }
    try:
        progress = progress_writer(args.out / PROGRESS_FILE, len(prompts))
        return score(dispatcher, evaluation, cfg.eval, args.out, settings, progress=progress)
    finally:
        dispatcher.stop(reason="evaluation finished")


def parser() -> argparse.ArgumentParser:
    from proto.config import add_settings_arguments, fields_help

    p = argparse.ArgumentParser(
        prog="python -m learner eval",
        description=__doc__.split("\n")[0],
        epilog=f"Settings: --config FILE, then dotted key=value overrides of:\n{fields_help(RunConfig)}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_settings_arguments(p, RunConfig, config_required=True)
    add_eval_arguments(p)
    p.add_argument("--out", type=Path, required=True, help="where per_prompt.jsonl and summary.json go")
    p.add_argument("--ready-file", type=Path, help="once bound, write the dispatcher's address here")
    return p


def add_eval_arguments(p: argparse.ArgumentParser) -> None:
    """The flags `acerl eval` passes through to this process."""
    p.add_argument("--prompts", type=Path, required=True, help="a prompt set (docs/orchestration.md)")
    p.add_argument(
        "--task", "--kind", dest="task", choices=["math", "code"], help="default: from the first record"
    )
    p.add_argument("--k", type=int, help="samples per prompt (default: the recipe's eval.k)")
    p.add_argument("--temperature", type=float, help="default: the recipe's eval.temperature; 0 is greedy")
    p.add_argument("--top-p", type=float, help="default: the recipe's eval.top_p")
    p.add_argument("--max-tokens", type=int, help="default: eval.max_tokens, else the task's longest stage")
    p.add_argument("--limit", type=int, help="the first N prompts only")
    p.add_argument("--seed", type=int, help="sampling seed (default: none)")


def main(argv: list[str] | None = None) -> int:
    from proto.config import ConfigError, load, parse_command_line
    from proto.logs import configure_logging

    args = parse_command_line(parser(), argv)
    configure_logging("evaluator", args.log_level)
    try:
        cfg = load(RunConfig, args.config, args.overrides)
        summary = evaluate_alone(cfg, args, args.ready_file)
    except (ConfigError, PromptSetError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except TimeoutError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    shown = {key: summary[key] for key in summary if key.startswith("avg@") or key in ("prompts", "skipped")}
    print(json.dumps(shown))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
