"""`python -m learner`: the training run, or GRPO on rollout groups from a file or a demo task.

    python -m learner run --config RUN.yaml [--resume] [--max-steps N] [--ready-file PATH] [key=value ...]
    python -m learner eval --config RUN.yaml --prompts FILE --out DIR [--k K] ... [key=value ...]
    python -m learner train --rollouts groups.bin --groups-per-step 8 [--config run.yaml] [key=value ...]
    python -m learner demo --steps 20 [--config run.yaml] [key=value ...]

Both write `<run_dir>/config.yaml`, `metrics.jsonl`, TensorBoard events and checkpoints, and
serve every new version on `publish.address` when it is set. `--resume` continues from the
newest complete checkpoint of the run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from learner.config import LearnerConfig
from learner.training.ranks import component_name
from proto.config import (
    ConfigError,
    add_settings_arguments,
    dump,
    fields_help,
    load,
    parse_command_line,
    replace,
)
from proto.logs import configure_logging

if TYPE_CHECKING:
    from learner.training.checkpoint import CheckpointState
    from learner.training.trainer import Learner

log = structlog.get_logger("learner")
FIELDS = fields_help(LearnerConfig)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m learner", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    # `run` is taken apart before this parser (learner/orchestration/run.py); listed for --help
    sub.add_parser("run", help="the full run: dispatcher, version gate, stage schedule (run --help)")
    sub.add_parser("eval", help="score one prompt set with generators and a judge (eval --help)")
    for name, text in (
        ("train", "train on rollout groups read from a file"),
        ("demo", "train on the built-in bandit task, sampling from the policy itself"),
    ):
        p = sub.add_parser(
            name,
            help=text,
            description=text,
            epilog=f"Settings: --config FILE, then dotted key=value overrides of:\n{FIELDS}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        add_settings_arguments(p, LearnerConfig)
        p.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint")
        p.add_argument("--steps", type=int, help="stop after this many learner steps in total")
        if name == "train":
            p.add_argument(
                "--rollouts", type=Path, required=True, help="file written by learner.training.rollout_file"
            )
            p.add_argument("--groups-per-step", type=int, required=True)
        else:
            p.add_argument("--prompts", type=int, default=8)
            p.add_argument("--n", type=int, default=8, help="completions per prompt")
            p.add_argument("--completion-len", type=int, default=3)
    return parser


def run(args: argparse.Namespace) -> int:
    base: dict[str, Any] = {}
    if args.command == "demo":
        base = {"run_dir": "runs/demo", "optim": {"lr": 2e-3}, "checkpoint": {"every_steps": 10}}
    cfg = load(LearnerConfig, args.config, args.overrides, base=base)
    if args.command == "demo" and cfg.model.path is None:
        from learner.tiny.model import write_tiny_model

        cfg = replace(cfg, model=replace(cfg.model, path=cfg.run_dir / "tiny_model"))
        if not (cfg.model.path / "config.json").exists():
            write_tiny_model(cfg.model.path, seed=cfg.seed)
    if cfg.model.path is None:
        raise ConfigError("model.path: required (a Hugging Face model directory)")
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    (cfg.run_dir / "config.yaml").write_text(dump(cfg))

    from learner.training.trainer import Learner

    learner = Learner(cfg)
    resumed = learner.resume() if args.resume else None
    if not learner.ranks.leads:
        learner.follow()  # rank 0 alone takes the batches, writes the metrics and publishes
        return 0
    try:
        return _lead(args, cfg, learner, resumed)
    finally:
        learner.release()


def _lead(
    args: argparse.Namespace, cfg: LearnerConfig, learner: Learner, resumed: CheckpointState | None
) -> int:
    from learner.metrics import MetricsWriter
    from learner.orchestration.batch_sources import BanditSource, FileSource
    from learner.orchestration.loop import run_loop
    from learner.training.broadcaster import broadcaster_of
    from learner.training.publisher import WeightPublisher

    if args.command == "demo":
        source = BanditSource(learner, prompts=args.prompts, n=args.n, completion_len=args.completion_len)
        default_steps = 20
    else:
        source = FileSource(learner, args.rollouts, args.groups_per_step)
        default_steps = source.steps_in_file
    steps = args.steps if args.steps is not None else default_steps
    metrics = MetricsWriter(cfg.run_dir, jsonl=cfg.metrics.jsonl, tensorboard=cfg.metrics.tensorboard)
    if resumed is not None:
        metrics.drop_from(resumed.step)  # steps after the checkpoint are trained again
    publisher = None
    if cfg.publish.address is not None:
        from proto.curve import CurveServerKeys

        keys = cfg.publish.secret_key
        publisher = WeightPublisher(
            cfg.publish.address,
            chunk_bytes=cfg.publish.chunk_bytes,
            max_streams=cfg.publish.max_streams,
            send_timeout_s=cfg.publish.send_timeout_s,
            curve=None if keys is None else CurveServerKeys(keys, cfg.publish.clients_dir),
            broadcaster=broadcaster_of(cfg.publish),
        )
        log.info("publisher_ready", address=publisher.address, version=learner.version)
    try:
        run_loop(learner, source, metrics, publisher=publisher, max_steps=steps)
    finally:
        metrics.close()
        if publisher is not None:
            publisher.close()
    log.info("done", steps=learner.step, version=learner.version, run_dir=str(cfg.run_dir))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["run"]:  # the full run: dispatcher, version gate, stage schedule
        from learner.orchestration.run import main as run_main

        return run_main(argv[1:])
    if argv[:1] == ["eval"]:  # one held-out set alone: a dispatcher for generators, no training
        from learner.evaluate import main as eval_main

        return eval_main(argv[1:])
    args = parse_command_line(_parser(), argv)
    configure_logging(component_name(), args.log_level)
    try:
        return run(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
