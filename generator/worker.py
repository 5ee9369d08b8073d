"""The generator's loop: the dispatcher session and the rollout pipeline, turned by one thread.

One thread drives everything that must stay in order (the dispatcher socket, the engine, the
judge client); only weight downloads run beside it. Each turn reads what the dispatcher pushed,
advances the pipeline (verdicts in, weights switched, queued work started, one engine step), and
keeps the session up (resends, heartbeats, credits). `Session` (generator/session.py) is the
reliable link to the learner; `Pipeline` (generator/pipeline.py) is the work; this module wires
them together and handles stopping.
"""

from __future__ import annotations

import signal
import time
from typing import Any

import structlog

from generator.config import GeneratorConfig
from generator.engine import Engine
from generator.pipeline import IDLE_WAIT_MS, Pipeline
from generator.session import Session
from proto.control import Shutdown
from proto.message import Message
from proto.sockets import Client
from proto.weights import WeightAnnounce
from proto.work import WorkBatch, WorkCancel

log = structlog.get_logger("generator")


class Worker:
    def __init__(self, config: GeneratorConfig, engine: Engine) -> None:
        self.cfg = config
        self.engine = engine
        self.id = config.generator_id
        # The session and the pipeline call on each other; the lambdas run only once both exist.
        self.session = Session(
            config,
            version=lambda: engine.version,
            work_ids=lambda: sorted(self.pipeline.held),
            on_push=self._pushed,
            on_answered=lambda message, detail: self.pipeline.answered(message, detail),
        )
        self.pipeline = Pipeline(config, engine, send=self.session.answer)
        self.stop_deadline: float | None = None
        self._signal: str | None = None

    def run(self) -> int:
        """Serve until shut down; the process exit code."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        log.info(
            "generator_started", generator=self.id, learner=self.cfg.learner, version=self.engine.version
        )
        if self.cfg.warm_reload:  # both reload paths (shm, CUDA IPC): a broken one fails here, at start
            try:
                self.engine.warm_reload(self.pipeline.fetcher.files)
            except Exception:
                log.exception("warm_reload_failed")  # every update would fail the same way
                self.close()
                return 1
        self.session.hello()
        code = 0
        try:
            while not self._finished_stopping():
                self.turn()
        except Exception as exc:
            log.exception("generator_failed")
            self.pipeline.hand_back_all(f"generator failure: {type(exc).__name__}: {exc}")
            self.session.flush(5.0)
            code = 1
        finally:
            self.close()
        log.info("generator_stopped", generator=self.id, **self.pipeline.counts)
        return code

    def turn(self) -> None:
        """One pass of the loop (tests drive it directly)."""
        if self._signal is not None:
            self.begin_stop(f"{self._signal} received", self.cfg.shutdown_grace_s)
            self._signal = None
        # While weights are loaded as they arrive, the loop waits on their arrival instead.
        if not self.engine.busy and self.pipeline.arriving is None:
            # Verdicts are waited for too: a group goes back as soon as its last one is in.
            peers = [self.session.connection]
            if self.pipeline.judging:
                peers.append(self.pipeline.judge.connection)
            Client.wait_any(peers, IDLE_WAIT_MS)
        self.session.pump(0)
        self.pipeline.advance()
        now = time.monotonic()
        self.session.resend(now)
        self.session.keep_alive(now)
        if self.stop_deadline is None:
            self.session.grant_credits(len(self.pipeline.held))
        if self.stop_deadline is not None and now < self.stop_deadline and self.session.learner_silent(now):
            # Nobody would take the answers: stop now instead of finishing work for no one.
            log.warning("stopping_without_learner", silent_s=round(now - self.session.last_heard, 1))
            self.stop_deadline = now
        if self.stop_deadline is not None and now >= self.stop_deadline:
            self.pipeline.hand_back_all("shutting down")

    def _pushed(self, message: Message) -> None:
        """What the dispatcher pushed: work and announcements for the pipeline, Shutdown for us."""
        if isinstance(message, WorkBatch):
            self.pipeline.take(message.items)
        elif isinstance(message, WorkCancel):
            self.pipeline.cancel(message.work_ids, message.reason)
        elif isinstance(message, WeightAnnounce):
            self.pipeline.announced(message)
        elif isinstance(message, Shutdown):
            self.begin_stop(f"shutdown: {message.reason}", min(message.deadline_s, self.cfg.shutdown_grace_s))
        else:
            log.warning("unexpected_message", type=message.TYPE)

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self.stop_deadline is not None:
            self.stop_deadline = time.monotonic()  # a second signal: hand back now
        self._signal = signal.Signals(signum).name

    # -- shutdown -----------------------------------------------------------------------------

    def begin_stop(self, reason: str, grace_s: float) -> None:
        """Take no more work; finish what is running within `grace_s`, then hand the rest back."""
        deadline = time.monotonic() + grace_s
        if self.stop_deadline is not None:
            self.stop_deadline = min(self.stop_deadline, deadline)
            return
        log.info("generator_stopping", reason=reason, grace_s=grace_s, holding=len(self.pipeline.held))
        self.stop_deadline = deadline
        self.pipeline.stop_taking()

    def _finished_stopping(self) -> bool:
        if self.stop_deadline is None or self.pipeline.unanswered:
            return False
        now = time.monotonic()
        # Past the deadline, wait a little longer for the last acknowledgements only.
        return (
            not self.session.pending
            or now > self.stop_deadline + 2 * self.cfg.resend_s
            or self.session.learner_silent(now)
        )

    def close(self) -> None:
        self.pipeline.close()
        self.session.close()
        self.engine.close()
