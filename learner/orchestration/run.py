"""The training run: the stage schedule, driven through the dispatcher and its version gate.

The dispatcher is a batch source for the one training loop (learner/orchestration/loop.py):
    batch  <- dispatcher.take_batch()    # only groups sampled with versions v-k .. v
    learner.train_step(batch)            # one GRPO update: weights v -> v+1, at the stage's settings
    publish v+1                          # generators fetch it; work for v+1 is issued
    evaluate the held-out sets before RL and after every stage
    checkpoint every N steps, with the dispatcher's state inside
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import structlog

from learner.config import EvalSet, RunConfig
from learner.evaluate import default_max_tokens, new_round, score
from learner.metrics import EvalRecord, MetricsWriter
from learner.on_policy import OnPolicyClock
from learner.orchestration.batch_log import BatchLog
from learner.orchestration.dispatcher import Dispatcher
from learner.orchestration.loop import BatchSource, Taken, run_loop
from learner.orchestration.schedule import Stage
from learner.orchestration.step_timeline import by_generator, wait_parts
from learner.orchestration.work_ledger import WorkLedger, split_work_id
from learner.training.broadcaster import broadcaster_of
from learner.training.checkpoint import CheckpointState
from learner.training.grpo import Batch
from learner.training.publisher import WeightPublisher
from learner.training.trainer import Learner
from proto.curve import CurveServerKeys
from proto.prompt import Prompt, load_prompts
from proto.ready import announce_ready
from proto.rollout import RolloutGroup
from proto.weights import WeightAnnounce
from proto.work import SamplingParams

log = structlog.get_logger("learner.run")


class GateViolation(RuntimeError):
    """A batch held a group the version gate or the stage should have kept out (a bug, never data)."""


def check_batch(batch: Batch, step: int, stage_index: int, on_policy: OnPolicyClock) -> None:
    """Check again, before training, what the work ledger let into the batch."""
    for group in batch.groups:
        if not on_policy.admits(group.policy_version, step):
            raise GateViolation(f"{group.work_id}: version {group.policy_version} trained at step {step}")
        if group.stage != stage_index:
            raise GateViolation(f"{group.work_id}: stage {group.stage} trained in stage {stage_index}")


def train(
    cfg: RunConfig, *, resume: bool = False, max_steps: int | None = None, ready_file: Path | None = None
) -> dict[str, Any]:
    """Run the schedule to its end (or `max_steps`); returns a summary. Once the dispatcher and the
    weight publisher are bound, their addresses are written to `ready_file`."""
    schedule = cfg.schedule
    on_policy = OnPolicyClock(schedule.max_staleness)  # the ledger's gate and the learner's count
    learner = Learner(cfg, on_policy=on_policy)
    state = learner.resume() if resume else None  # every rank loads its part
    if not learner.ranks.leads:
        learner.follow()  # rank 0 alone runs the dispatcher, the publisher and the metrics
        return {"steps": learner.step, "version": learner.version, "done": True, "rank": learner.ranks.rank}
    try:
        return _lead(cfg, learner, state, max_steps, ready_file)
    finally:
        learner.release()


def _lead(
    cfg: RunConfig,
    learner: Learner,
    state: CheckpointState | None,
    max_steps: int | None,
    ready_file: Path | None,
) -> dict[str, Any]:
    schedule = cfg.schedule
    prompt_sets = [load_prompts(stage.prompts, stage.kind) for stage in schedule.stages]
    ledger = WorkLedger(schedule, prompt_sets, learner.on_policy, overissue=cfg.dispatch.overissue)
    metrics = MetricsWriter(cfg.run_dir, jsonl=cfg.metrics.jsonl, tensorboard=cfg.metrics.tensorboard)
    batches = BatchLog(cfg.run_dir)
    if state is not None:
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
        broadcaster=broadcaster_of(cfg.publish),
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
    announce_ready(ready_file, dispatch=dispatcher.address, weights=publisher.address)
    started = time.perf_counter()
    eval_sets = [(spec, load_prompts(spec.prompts, spec.task)[: spec.limit]) for spec in cfg.eval.sets]
    source = ScheduleSource(cfg, learner, dispatcher, metrics, batches, eval_sets)
    try:
        run_loop(learner, source, metrics, publisher=publisher, max_steps=max_steps)
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
    *,
    full: bool = True,
) -> None:
    """Score every held-out set with the current weights; one `eval` record per set and mode, and
    its per-prompt results under <run_dir>/eval/. Not `full`: what `eval.between_stages` asks for."""
    e = cfg.eval
    stages = cfg.schedule.stages
    greedy = [(1, 0.0)] if e.greedy else []
    if full or e.between_stages == "full":
        modes = [(e.k, e.temperature), *greedy]
    else:
        modes = greedy if e.between_stages == "greedy" else []
    for spec, prompts in eval_sets:
        for k, temperature in modes:
            mode = "greedy" if temperature == 0 else f"avg{k}"
            sampling = SamplingParams(
                n=k, max_tokens=default_max_tokens(cfg, spec.task), temperature=temperature, top_p=e.top_p
            )
            tag = f"{learner.step}/{spec.label}/{mode}"
            evaluation = new_round(cfg, tag, spec.task, prompts, sampling, learner.on_policy, stage)
            directory = cfg.run_dir / "eval" / f"step{learner.step:06d}-{spec.label}-{mode}"
            settings = {
                "step": learner.step,
                "stage": stage,
                "task": spec.task,
                "set": spec.label,
                "prompts_file": str(spec.prompts),
            }
            summary = score(dispatcher, evaluation, e, directory, settings)
            record = EvalRecord(
                step=learner.step,
                stage=stage,
                stage_name=stages[stage].name,
                task=spec.task,
                set_name=spec.label,
                mode=mode,
                accuracy=evaluation.accuracy(),
                k=k,
                temperature=temperature,
                n=len(evaluation.results),
                skipped=evaluation.skipped,
                eval_s=summary["eval_s"],
            )
            metrics.write(record)
            log.info("evaluated", **record.model_dump(include={"step", "task", "mode", "accuracy", "n"}))


def ends_its_task(stages: list[Stage], index: int) -> bool:
    """Is stage `index` the last of a run of stages of one task (where that task's gain is read)?"""
    return index + 1 == len(stages) or stages[index + 1].kind != stages[index].kind


class ScheduleSource(BatchSource):
    """Batches from the dispatcher, stage after stage, each step at its stage's learning rate and
    overlong filtering; the held-out sets are scored before RL and after every stage."""

    def __init__(
        self,
        cfg: RunConfig,
        learner: Learner,
        dispatcher: Dispatcher,
        metrics: MetricsWriter,
        batches: BatchLog,
        eval_sets: list[tuple[EvalSet, list[Prompt]]],
    ) -> None:
        self.cfg, self.learner, self.dispatcher = cfg, learner, dispatcher
        self.metrics, self.batches, self.eval_sets = metrics, batches, eval_sets
        self.stage_taken: int | None = None  # the stage of the last batch taken
        self.taken = Batch(trained=[])
        self.counts_before: dict[str, int] = {}

    @property
    def done(self) -> bool:
        return self.dispatcher.ledger.done

    def take(self) -> Taken:
        ledger = self.dispatcher.ledger
        stage_index = ledger.stage_index
        stage = self.cfg.schedule.stages[stage_index]
        self.counts_before = self.dispatcher.counts()
        waited, waited_from = time.perf_counter(), time.time()
        on_ready = None
        if self.learner.streams:

            def on_ready(groups: list[RolloutGroup]) -> None:
                self.learner.stream(groups, mask_truncated=stage.mask_truncated)

        try:
            batch = self.dispatcher.take_batch(self.cfg.dispatch.batch_timeout_s, on_ready=on_ready)
        except BaseException:
            self.learner.drop_stream()
            raise
        wait_s = time.perf_counter() - waited
        step = self.learner.step
        check_batch(batch, step, stage_index, ledger.on_policy)
        self.batches.write(step, stage_index, batch.groups)
        self.stage_taken, self.taken = stage_index, batch
        fields = {
            "stage": stage_index,
            "stage_name": stage.name,
            "task": stage.kind,
            "epoch": split_work_id(batch.groups[0].work_id)[1],
            "wait_s": wait_s,
            **wait_parts(batch.groups, waited_from, waited_from + wait_s),
            **by_generator(batch.groups),
        }
        return Taken(batch, lr=stage.learning_rate, mask_truncated=stage.mask_truncated, fields=fields)

    def published(self, announcement: WeightAnnounce) -> None:
        self.dispatcher.publish(announcement)

    def finish(self, record: dict[str, Any]) -> None:
        counts = self.dispatcher.counts()
        delta = {key: counts.get(key, 0) - self.counts_before.get(key, 0) for key in counts}
        judged_groups = delta.get("accepted", 0) + delta.get("zero_variance", 0)
        # accuracy is over the trained batch, which dynamic sampling biases towards hard prompts;
        # sampled_accuracy also counts the groups it left out: what the policy does on the prompts
        trained = sum(len(group.completions) for group in self.taken.groups)
        left_out = delta.get("zero_variance_completions", 0)
        sampled_accuracy = (record["accuracy"] * trained + delta.get("zero_variance_correct", 0)) / (
            trained + left_out
        )
        record.update(
            zero_var_frac=delta.get("zero_variance", 0) / judged_groups if judged_groups else 0.0,
            sampled_accuracy=sampled_accuracy,
            # wall clock (Unix seconds) once the step's weights are out: steps per second over a run
            # are read from these, wait and publish included, which step_s alone leaves out
            time=time.time(),
            **{f"dispatch_{key}": value for key, value in delta.items() if value},
        )

    def between_steps(self) -> None:
        if self.stage_taken is None:
            if self.learner.step == 0:
                self._evaluate(stage=0, full=True)
        elif self.dispatcher.ledger.stage_index != self.stage_taken:
            after = self.stage_taken
            self._evaluate(stage=after, full=ends_its_task(self.cfg.schedule.stages, after))

    def _evaluate(self, stage: int, *, full: bool) -> None:
        _evaluate(
            self.cfg, self.eval_sets, self.learner, self.dispatcher, self.metrics, stage=stage, full=full
        )

    def state(self) -> dict[str, Any]:
        return {"dispatcher": self.dispatcher.state()}


def main(argv: list[str] | None = None) -> int:
    """`python -m learner run --config RUN.yaml [--resume] [--max-steps N] [--ready-file PATH]
    [--log-level L] [key=value ...]`; 2 on a bad configuration."""
    import argparse
    import sys

    from learner.training.ranks import component_name
    from proto.config import ConfigError, add_settings_arguments, dump, fields_help, load, parse_command_line
    from proto.logs import configure_logging

    parser = argparse.ArgumentParser(
        prog="python -m learner run",
        description=__doc__.split("\n")[0],
        epilog=f"Settings: --config FILE, then dotted key=value overrides of:\n{fields_help(RunConfig)}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_settings_arguments(parser, RunConfig, config_required=True)
    parser.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint")
    parser.add_argument("--max-steps", type=int, help="stop after this many steps in total")
    parser.add_argument(
        "--ready-file", type=Path, help="once bound, write the dispatcher's and weights' addresses here"
    )
    args = parse_command_line(parser, argv)
    configure_logging(component_name(), args.log_level)
    try:
        cfg = load(RunConfig, args.config, args.overrides)
        if cfg.model.path is None:
            raise ConfigError("model.path: required (a Hugging Face model directory)")
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    (cfg.run_dir / "config.yaml").write_text(dump(cfg))
    summary = train(cfg, resume=args.resume, max_steps=args.max_steps, ready_file=args.ready_file)
    return 0 if summary["done"] or args.max_steps is not None else 1


if __name__ == "__main__":
    raise SystemExit(main())
