"""The one training loop. Every way of running the learner is a batch source for it:

    publish the weights held
    until the source is done (or `max_steps`):
        taken <- source.take()           # one screened batch, and the stage's settings
        learner.train_step(taken.batch)  # weights v -> v+1; the clock moves on even if no token trains
        publish v+1                      # a source with generators tells them
        write the step's record          # the source adds what it counted; it may evaluate now
        checkpoint every N steps, with the source's state inside

The sources: the dispatcher and its stage schedule (`learner run`, learner/orchestration/run.py), a file of
rollout groups (`learner train`) and the in-process bandit (`learner demo`)
(learner/orchestration/batch_sources.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import structlog

from learner.metrics import MetricsWriter, TrainRecord
from learner.training.grpo import Batch
from learner.training.publisher import WeightPublisher
from learner.training.trainer import Learner
from proto.weights import WeightAnnounce

log = structlog.get_logger("learner.loop")


@dataclass
class Taken:
    """A batch and what its step needs to know besides."""

    batch: Batch
    lr: float | None = None  # the stage's learning rate; None: as configured
    mask_truncated: bool | None = None  # the stage's overlong filtering; None: as configured
    fields: dict[str, Any] = field(default_factory=dict)  # for the step's record (stage name, wait...)


class BatchSource:
    """Where the loop's batches come from; the defaults suit a source without generators."""

    @property
    def done(self) -> bool:
        return False

    def take(self) -> Taken:
        raise NotImplementedError

    def published(self, announcement: WeightAnnounce) -> None:
        """New weights are out."""

    def finish(self, record: dict[str, Any]) -> None:
        """Add what the source counted during the step to its record."""

    def between_steps(self) -> None:
        """Called before the first step and after every one (the run evaluates here)."""

    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps for the source to continue."""
        return {}


def run_loop(
    learner: Learner,
    source: BatchSource,
    metrics: MetricsWriter,
    *,
    publisher: WeightPublisher | None = None,
    max_steps: int | None = None,
) -> None:
    """Train batches of `source` until it is done or the learner has finished `max_steps` steps."""
    saved_at = learner.step
    if publisher is not None:
        _publish(learner, source, publisher)
    source.between_steps()
    while not source.done and (max_steps is None or learner.step < max_steps):
        taken = source.take()
        record = learner.train_step(taken.batch, mask_truncated=taken.mask_truncated, lr=taken.lr)
        record.update(taken.fields)
        if publisher is not None:
            record["publish_s"] = _publish(learner, source, publisher)
        source.finish(record)
        metrics.write(TrainRecord(**record))
        source.between_steps()
        if learner.due_checkpoint():
            learner.save_checkpoint(source.state())
            saved_at = learner.step
    if learner.cfg.checkpoint.every_steps > 0 and saved_at != learner.step:
        learner.save_checkpoint(source.state())


def _publish(learner: Learner, source: BatchSource, publisher: WeightPublisher) -> float:
    """Serve the weights held as their version; returns the seconds it took."""
    started = time.perf_counter()
    source.published(publisher.publish(learner.version, learner.weights()))
    return time.perf_counter() - started
