"""The training run: the stage schedule, driven through the dispatcher and its version gate.

publish v0
loop over steps v = 0, 1, ...:
    batch  <- dispatcher.take_batch()    # only groups sampled with versions v-k .. v
    learner.train_step(batch)            # one GRPO update: weights v -> v+1
    publish v+1                          # generators fetch it; work for v+1 is issued
    checkpoint every N steps, with the dispatcher's state inside
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Literal

import structlog
from pydantic import Field

from learner.batch_log import BatchLog
from learner.config import LearnerConfig, Section
from learner.dispatcher import Dispatcher
from learner.evaluation import EvalRound
from learner.metrics import MetricsWriter
from learner.prompts import Prompt, load_prompts
from learner.publisher import WeightPublisher
from learner.schedule import Schedule
from learner.trainer import Learner
from learner.work_ledger import WorkLedger, split_work_id
from proto.curve import CurveServerKeys
from proto.work import SamplingParams

log = structlog.get_logger("learner.run")


class DispatchConfig(Section):
    address: str = "tcp://127.0.0.1:5555"
    secret_key: Path | None = None  # CURVE secret key file; required to bind off loopback
    clients_dir: Path | None = None  # public keys of the only generators let in
    heartbeat_timeout_s: float = Field(default=30.0, gt=0)
    # work pushed this long ago that a generator's heartbeat does not list is issued again
    reconcile_grace_s: float = Field(default=10.0, gt=0)
    overissue: float = Field(default=1.0, ge=1.0)  # with dynamic sampling: spare prompts in flight
    batch_timeout_s: float = Field(default=1800.0, gt=0)  # no batch in this time stops the run


class EvalSet(Section):
    task: Literal["math", "code"]
    prompts: Path
    limit: int | None = Field(default=None, ge=1)  # the first `limit` prompts only


class EvalConfig(Section):
    """Held-out evaluation before RL, at the end of every stage, and at the end."""

    sets: list[EvalSet] = []
    k: int = Field(default=4, ge=1)  # avg@k: samples per prompt at `temperature`
    temperature: float = Field(default=0.6, ge=0)
    top_p: float = Field(default=0.95, gt=0, le=1)
    greedy: bool = True  # also one greedy completion per prompt
    max_tokens: int | None = Field(default=None, ge=1)  # default: the longest of the schedule's stages
    timeout_s: float = Field(default=1800.0, gt=0)


class RunConfig(LearnerConfig):
    schedule: Schedule
    dispatch: DispatchConfig = DispatchConfig()
    eval: EvalConfig = EvalConfig()


class GateViolation(RuntimeError):
    """A batch held a group the version gate or the stage should have kept out (a bug, never data)."""


def check_batch(batch: list, step: int, stage_index: int, max_staleness: int) -> None:
    for group in batch:
        if not step - max_staleness <= group.policy_version <= step:
            raise GateViolation(f"{group.work_id}: version {group.policy_version} trained at step {step}")
        if group.stage != stage_index:
            raise GateViolation(f"{group.work_id}: stage {group.stage} trained in stage {stage_index}")


def train(cfg: RunConfig, *, resume: bool = False, max_steps: int | None = None) -> dict[str, Any]:
    """Run the schedule to its end (or `max_steps`); returns a summary."""
    schedule = cfg.schedule
    prompt_sets = [load_prompts(stage.prompts, stage.kind) for stage in schedule.stages]
    ledger = WorkLedger(schedule, prompt_sets, overissue=cfg.dispatch.overissue)
    learner = Learner(cfg)
    metrics = MetricsWriter(cfg.run_dir, jsonl=cfg.metrics.jsonl, tensorboard=cfg.metrics.tensorboard)
    batches = BatchLog(cfg.run_dir)
    if resume and (state := learner.resume()) is not None:
        ledger.restore(state.extra_state["dispatcher"])
        metrics.drop_from(state.step)
        batches.drop_from(state.step)
        log.info("resumed", step=state.step, stage=ledger.stage_index, pending=len(ledger.queue))
    curve = None
    if cfg.dispatch.secret_key is not None:
        curve = CurveServerKeys(cfg.dispatch.secret_key, cfg.dispatch.clients_dir)
    weights_curve = curve  # the publisher takes the dispatcher's keys unless it has its own
    if cfg.publish.secret_key is not None:
        weights_curve = CurveServerKeys(cfg.publish.secret_key, cfg.publish.clients_dir)
    publisher = WeightPublisher(
        cfg.publish.address or "tcp://127.0.0.1:*",
        chunk_bytes=cfg.publish.chunk_bytes,
        max_streams=cfg.publish.max_streams,
        send_timeout_s=cfg.publish.send_timeout_s,
        curve=weights_curve,
    )
    dispatcher = Dispatcher(
        ledger,
        cfg.dispatch.address,
        curve=curve,
        heartbeat_timeout_s=cfg.dispatch.heartbeat_timeout_s,
        reconcile_grace_s=cfg.dispatch.reconcile_grace_s,
    )
    log.info("dispatcher_ready", address=dispatcher.address, weights=publisher.address)
    dispatcher.start()
    saved_at = learner.step
    started = time.perf_counter()
    eval_sets = [(spec, load_prompts(spec.prompts, spec.task)[: spec.limit]) for spec in cfg.eval.sets]
    try:
        dispatcher.publish(publisher.publish(learner.version, learner.weights()))
        if learner.step == 0:
            _evaluate(cfg, eval_sets, learner, dispatcher, metrics)
        while not ledger.done and (max_steps is None or learner.step < max_steps):
            stage_before = ledger.stage_index
            record = _one_step(cfg, learner, dispatcher, publisher, batches)
            metrics.write(record)
            if ledger.stage_index != stage_before:
                _evaluate(cfg, eval_sets, learner, dispatcher, metrics, stage=stage_before)
            if learner.due_checkpoint():
                learner.save_checkpoint({"dispatcher": dispatcher.state()})
                saved_at = learner.step
        if cfg.checkpoint.every_steps > 0 and saved_at != learner.step:
            learner.save_checkpoint({"dispatcher": dispatcher.state()})
    finally:
        dispatcher.stop(reason="run finished" if ledger.done else "learner stopped")
        publisher.close()
        metrics.close()
    summary = {
        "steps": learner.step,
        "version": learner.version,
        "done": ledger.done,
        "seconds": time.perf_counter() - started,
        "counts": dict(ledger.counts),
    }
    log.info("run_finished", **summary)
    return summary


def _evaluate(
    cfg: RunConfig,
    eval_sets: list[tuple[EvalSet, list[Prompt]]],
    learner: Learner,
    dispatcher: Dispatcher,
    metrics: MetricsWriter,
    stage: int = 0,
) -> None:
    """Score every held-out set with the current weights; one `eval` record per set and mode."""
    e = cfg.eval
    stages = cfg.schedule.stages
    modes = [(e.k, e.temperature)] + ([(1, 0.0)] if e.greedy else [])
    for spec, prompts in eval_sets:
        longest = max((s.max_response_tokens for s in stages if s.kind == spec.task), default=None)
        max_tokens = e.max_tokens or longest or max(s.max_response_tokens for s in stages)
        for k, temperature in modes:
            mode = "greedy" if temperature == 0 else f"avg{k}"
            sampling = SamplingParams(n=k, max_tokens=max_tokens, temperature=temperature, top_p=e.top_p)
            evaluation = EvalRound(
                f"{learner.step}/{spec.task}/{mode}",
                spec.task,
                prompts,
                sampling,
                version=learner.version,
                stage=stage,
                lease_s=cfg.schedule.lease_s,
                max_attempts=cfg.schedule.max_attempts,
            )
            started = time.perf_counter()
            dispatcher.evaluate(evaluation, e.timeout_s)
            record = {
                "kind": "eval",
                "step": learner.step,
                "stage": stage,
                "stage_name": stages[stage].name,
                "task": spec.task,
                "mode": mode,
                "accuracy": evaluation.accuracy(),
                "k": k,
                "temperature": temperature,
                "n": len(evaluation.results),
                "skipped": evaluation.skipped,
                "eval_s": time.perf_counter() - started,
            }
            metrics.write(record)
            log.info("evaluated", **{key: record[key] for key in ("step", "task", "mode", "accuracy", "n")})


def _one_step(
    cfg: RunConfig, learner: Learner, dispatcher: Dispatcher, publisher: WeightPublisher, batches: BatchLog
) -> dict[str, Any]:
    ledger = dispatcher.ledger
    stage_index = ledger.stage_index
    stage = cfg.schedule.stages[stage_index]
    learner.engine.set_lr(stage.learning_rate)
    cfg.grpo.mask_truncated = stage.mask_truncated
    cfg.grpo.drop_zero_variance = cfg.schedule.dynamic_sampling
    counts_before = dispatcher.counts()
    waited = time.perf_counter()
    batch = dispatcher.take_batch(cfg.dispatch.batch_timeout_s)
    wait_s = time.perf_counter() - waited
    step = learner.step
    check_batch(batch, step, stage_index, cfg.schedule.max_staleness)
    batches.write(step, stage_index, batch)
    epoch = split_work_id(batch[0].work_id)[1]
    _, temperature = stage.sampling_at(epoch)
    record = learner.train_step(batch, temperature=temperature if temperature > 0 else 1.0)
    if not record["trained"]:
        learner.step += 1  # nothing carried gradient: the weights stay, the version still moves on
        learner.version += 1
        for key in (
            "loss",
            "entropy",
            "logprob_mismatch",
            "logprob_mismatch_max",
            "grad_norm",
            "tokens_per_s",
        ):
            record.setdefault(key, None)  # not measured: no trained token (written as null)
    published = time.perf_counter()
    dispatcher.publish(publisher.publish(learner.version, learner.weights()))
    counts = dispatcher.counts()
    delta = {key: counts.get(key, 0) - counts_before.get(key, 0) for key in counts}
    judged_groups = delta.get("accepted", 0) + delta.get("zero_variance", 0)
    # accuracy is over the trained batch, which dynamic sampling biases towards hard prompts;
    # sampled_accuracy also counts the groups it left out: what the policy does on the prompts
    trained = sum(len(group.completions) for group in batch)
    left_out = delta.get("zero_variance_completions", 0)
    sampled_accuracy = (record["accuracy"] * trained + delta.get("zero_variance_correct", 0)) / (
        trained + left_out
    )
    record.update(
        stage=stage_index,
        stage_name=stage.name,
        task=stage.kind,
        epoch=epoch,
        policy_version=step,
        wait_s=wait_s,
        publish_s=time.perf_counter() - published,
        zero_var_frac=delta.get("zero_variance", 0) / judged_groups if judged_groups else 0.0,
        sampled_accuracy=sampled_accuracy,
        # wall clock (Unix seconds) once the step's weights are out: steps per second over a run
        # are read from these, wait and publish included, which step_s alone leaves out
        time=time.time(),
        **{f"dispatch_{key}": value for key, value in delta.items() if value},
    )
    return record


def main(argv: list[str] | None = None) -> int:
    """`python -m learner.run --config RUN.yaml [--resume] [--max-steps N] [key=value ...]`."""
    import argparse
    import sys

    from learner.config import ConfigError, dump_config, load_config
    from learner.logs import configure_logging

    parser = argparse.ArgumentParser(prog="python -m learner.run", description=__doc__.split("\n")[0])
    parser.add_argument("--config", type=Path, required=True, help="YAML file of RunConfig fields")
    parser.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint")
    parser.add_argument("--max-steps", type=int, help="stop after this many steps in total")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides")
    args = parser.parse_args(argv)
    configure_logging(args.log_level)
    try:
        cfg = load_config(args.config, args.overrides, schema=RunConfig)
        if cfg.model.path is None:
            raise ConfigError("model.path: required (a Hugging Face model directory)")
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    (cfg.run_dir / "config.yaml").write_text(dump_config(cfg))
    summary = train(cfg, resume=args.resume, max_steps=args.max_steps)
    return 0 if summary["done"] or args.max_steps is not None else 1


if __name__ == "__main__":
    raise SystemExit(main())
