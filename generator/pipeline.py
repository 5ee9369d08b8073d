"""The rollout pipeline: a work item goes through the engine, then the judge, and back as a group.

Each item is `Held` from the moment it arrives until the dispatcher acknowledges its answer, and
moves through the states queued -> running (the engine samples it) -> judging -> returning.
Answers leave through `send` (the session resends them until acknowledged).

The on-policy rule: an item is sampled only by the version it names. When work for a newer
version arrives, every older item not yet sampled is aborted and handed back (WorkAborted)
before the new weights are loaded, so no group mixes versions and none is returned as newer
than the weights that produced it. vLLM's own weight-version labels on every sample are checked
against the version the group claims.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import structlog

from generator.config import GeneratorConfig
from generator.engine import Engine, Finished, PromptError, Sample
from generator.rollout import judge_request, rollout_group
from generator.session import ABANDONED, Answer
from generator.weight_broadcast import BroadcastReceiver
from generator.weight_fetch import FetchError, WeightFetcher
from generator.weight_set import Arrivals, WeightSet
from proto.curve import CurveClientKeys
from proto.judge import UNJUDGED_STATUSES, Verdict
from proto.judge_client import JudgeClient
from proto.rollout import RolloutGroup, WorkAborted
from proto.weights import WeightAnnounce
from proto.work import WorkItem

log = structlog.get_logger("generator")

LATE_ANSWER_GRACE_S = 30.0  # resend an unacknowledged answer this long past the item's lease
IDLE_WAIT_MS = 20


@dataclass
class Held:
    """A work item from the moment it arrives until the dispatcher acknowledges its answer."""

    item: WorkItem
    received: float
    state: Literal["queued", "running", "judging", "returning"] = "queued"
    request_id: str | None = None
    version: int | None = None  # the weights that sampled it
    started: float = 0.0
    prompt_token_ids: np.ndarray | None = None
    opened_think: bool = False  # the rendered prompt ended with <think>: responses start inside it
    samples: list[Sample] | None = None
    verdicts: dict[int, Verdict] = field(default_factory=dict)
    judge_tries: dict[int, int] = field(default_factory=dict)
    judge_started: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)


class Pipeline:
    """The work a generator holds, from its arrival to its answer; the engine, judge and weights."""

    def __init__(
        self, config: GeneratorConfig, engine: Engine, send: Callable[[Answer, float], None]
    ) -> None:
        self.cfg = config
        self.engine = engine
        self.id = config.generator_id
        self._send = send
        judge_curve = (
            None if config.judge_key is None else CurveClientKeys(config.judge_key, config.client_key)
        )
        self.judge = JudgeClient(
            config.judge, curve=judge_curve, request_timeout_s=config.judge_timeout_s, attempts=2
        )
        weights_key = config.weights_key or config.learner_key
        self.fetcher = WeightFetcher(
            self.id,
            curve=None if weights_key is None else CurveClientKeys(weights_key, config.client_key),
            timeout_s=config.weight_timeout_s,
            broadcast=(
                BroadcastReceiver(self.id, config.broadcast_timeout_s)
                if config.weight_transfer == "broadcast"
                else None
            ),
        )
        self.held: dict[str, Held] = {}
        self.queue: deque[str] = deque()
        self.by_request: dict[str, str] = {}  # engine request id -> work id
        self.by_judge_id: dict[str, tuple[str, int, int]] = {}  # judge id -> (work id, index, attempt)
        self.announce: WeightAnnounce | None = None
        self.arriving: Arrivals | None = None  # the version being loaded while it arrives
        self.arrived_seen: tuple[Arrivals | None, int] = (None, 0)  # its tensors loaded so far
        self.stopping = False  # no new work is taken
        self.counts: dict[str, int] = {"groups": 0, "aborted": 0, "cancelled": 0, "weight_loads": 0}

    def advance(self) -> None:
        """Collect verdicts, switch weights when queued work needs it, start work, step the engine."""
        self._pump_judge()
        if self._switch_weights():
            self._start_queued()
        if self.engine.busy:
            for finished in self.engine.step():
                self._sampled(finished)

    @property
    def judging(self) -> bool:
        """Whether verdicts are still awaited."""
        return bool(self.by_judge_id)

    @property
    def unanswered(self) -> bool:
        """Whether an item is held whose answer has not been sent yet."""
        return any(h.state != "returning" for h in self.held.values())

    # -- work in, work back -------------------------------------------------------------------

    def take(self, items: list[WorkItem]) -> None:
        refused: dict[str, list[str]] = {}
        now = time.monotonic()
        for item in items:
            existing = self.held.get(item.id)
            if existing is not None:
                if item.attempt <= existing.item.attempt:
                    log.warning("duplicate_item", work_id=item.id, attempt=item.attempt)
                    continue
                self._forget(existing)  # re-issued to this generator: the earlier attempt is dead
            reason = None
            if self.stopping:
                reason = "shutting down"
            elif len(self.held) >= self.cfg.credits:
                reason = f"over credit: holding {len(self.held)} of {self.cfg.credits}"
            elif item.policy_version < self.engine.version:
                reason = f"stale version: v{item.policy_version} asked, engine holds v{self.engine.version}"
            if reason is not None:
                refused.setdefault(reason, []).append(item.id)
                continue
            self.held[item.id] = Held(item, received=now)
            self.queue.append(item.id)
        for reason, work_ids in refused.items():
            self._send_aborted(work_ids, reason)

    def cancel(self, work_ids: list[str], reason: str) -> None:
        cancelled = [w for w in work_ids if w in self.held and self.held[w].state != "returning"]
        for work_id in cancelled:
            self._forget(self.held[work_id])
        self.counts["cancelled"] += len(cancelled)
        if cancelled:
            log.info("work_cancelled", count=len(cancelled), reason=reason)

    def answered(self, message: Answer, detail: str) -> None:
        """The session settled an answer: a group acknowledged (or refused, or given up on) is done."""
        if not isinstance(message, RolloutGroup):
            return
        held = self.held.get(message.work_id)
        if held is not None and held.state == "returning" and held.item.attempt == message.attempt:
            del self.held[message.work_id]
        elif detail == ABANDONED:
            self.held.pop(message.work_id, None)

    def _forget(self, held: Held) -> None:
        """Drop an item wherever it is (its late verdicts and engine output are then ignored)."""
        if held.state == "running" and held.request_id is not None:
            self.engine.abort([held.request_id])
            self.by_request.pop(held.request_id, None)
        if held.state == "queued" and held.item.id in self.queue:
            self.queue.remove(held.item.id)
        if self.held.get(held.item.id) is held:
            del self.held[held.item.id]

    def _send_aborted(self, work_ids: list[str], reason: str) -> None:
        if not work_ids:
            return
        self.counts["aborted"] += len(work_ids)
        log.info("work_aborted", count=len(work_ids), reason=reason)
        message = WorkAborted(generator_id=self.id, work_ids=work_ids, reason=reason[:2000])
        self._send(message, time.monotonic() + LATE_ANSWER_GRACE_S)

    def abort(self, work_ids: list[str], reason: str) -> None:
        """Drop these items and hand them back to the dispatcher."""
        for work_id in work_ids:
            held = self.held.get(work_id)
            if held is not None:
                self._forget(held)
        self._send_aborted(work_ids, reason)

    def stop_taking(self) -> None:
        """Refuse new work from now on, and hand back what has not started."""
        self.stopping = True
        self.abort(list(self.queue), "shutting down")

    def hand_back_all(self, reason: str) -> None:
        """Everything not already answered goes back to the dispatcher."""
        self.abort([w for w, h in self.held.items() if h.state != "returning"], reason)

    # -- weights ------------------------------------------------------------------------------

    def announced(self, announce: WeightAnnounce) -> None:
        """A new version is published: start fetching it at once, while sampling goes on."""
        if self.announce is not None and announce.version <= self.announce.version:
            return
        self.announce = announce
        log.info("weights_announced", version=announce.version, bytes=announce.total_bytes)
        if announce.version > self.engine.version:
            self.fetcher.want(announce.version, self._weights_address(announce), announce)

    def _weights_address(self, announce: WeightAnnounce | None) -> str:
        if self.cfg.weights:  # given by the operator: the publisher as this machine reaches it
            return self.cfg.weights
        for candidate in (announce, self.announce):
            if candidate is not None and candidate.address:
                return candidate.address
        return self.cfg.learner  # an announcement without an address: the publisher is the learner

    def _switch_weights(self) -> bool:
        """Make the engine hold the version queued work needs; False while it is not there yet.

        While that version still arrives, its complete tensors are loaded in steps (the engine
        is idle then: older work was aborted). From the first step to the last no request is
        started: this returns False until the whole version is in.
        """
        self.arriving = None
        loading = self.engine.loading
        targets = [self.held[w].item.policy_version for w in self.queue]
        if loading is not None:
            targets.append(loading)  # a reload once begun is finished, even if its work left
        if not targets:
            return True
        target = max(targets)
        if target <= self.engine.version and self.engine.whole and loading is None:
            return True
        stale = [
            w
            for w, h in self.held.items()
            if h.state in ("queued", "running") and h.item.policy_version < target
        ]
        if stale:
            self.abort(stale, f"stale version: v{target} is required now")
        if loading is not None and loading != target:
            self.engine.abandon_load()
        if self.announce is None and not self.cfg.weights:
            return False  # nothing says yet where the weights are served: the announcement will
        announce = self.announce if self.announce is not None and self.announce.version == target else None
        self.fetcher.want(target, self._weights_address(announce), announce)
        result = self.fetcher.take(target)
        if result is None:
            self._load_arrived(target)
            return False
        if isinstance(result, FetchError):
            if self.engine.loading is not None:
                self.engine.abandon_load()
            # Superseded: work issued just before the next version was announced. The dispatcher
            # issues it again with the newest version.
            report = log.info if result.code == "superseded" else log.error
            report("weights_unavailable", version=target, error=str(result))
            self.abort([w for w in self.queue if self.held[w].item.policy_version == target], str(result))
            return True
        self._load(result)
        return True

    def _load_arrived(self, version: int) -> None:
        """Load what has arrived of `version` so far, once there is enough to be worth a step."""
        # A step costs a round trip to the engine's workers; what arrives during the last step
        # is what is left to load once the last chunk is in.
        step_bytes = int(self.cfg.weight_load_step_mb * (1 << 20))
        if step_bytes <= 0 or not self.engine.partial_loads or self.engine.busy:
            return
        arrivals = self.fetcher.arriving(version)
        if arrivals is None or arrivals.ended:
            return  # not started, or between attempts: the dispatcher wait paces the loop
        seen = self.arrived_seen[1] if self.arrived_seen[0] is arrivals else 0
        self.arriving = arrivals  # the next turn waits on it rather than on the dispatcher
        entries = arrivals.wait(seen, step_bytes, IDLE_WAIT_MS / 1000)
        if entries and not arrivals.ended:  # once ended, the rest goes with the final step
            self.engine.load_arrived(arrivals, entries)
            self.arrived_seen = (arrivals, seen + len(entries))

    def _load(self, weight_set: WeightSet) -> None:
        try:
            self.engine.load_weights(weight_set)
        finally:
            weight_set.close()
        self.counts["weight_loads"] += 1

    # -- sampling and judging -----------------------------------------------------------------

    def _start_queued(self) -> None:
        rejected: dict[str, list[str]] = {}
        while self.queue:
            held = self.held[self.queue.popleft()]
            item = held.item
            try:
                prompt = self.engine.render_prompt(
                    item.prompt, item.prompt_token_ids, item.apply_chat_template
                )
                params = self.engine.sampling_params(item.sampling, len(prompt))
                held.opened_think = self.engine.opens_think(prompt)
            except PromptError as exc:
                log.error("prompt_rejected", work_id=item.id, error=str(exc))
                del self.held[item.id]
                rejected.setdefault(f"rejected: {exc}", []).append(item.id)
                continue
            now = time.monotonic()
            held.request_id = self.engine.submit(prompt, params)
            held.state = "running"
            held.version = self.engine.version
            held.started = now
            held.timings["queue"] = now - held.received
            held.timings["started_at"] = time.time()  # wall clock: the learner lays steps out with it
            self.by_request[held.request_id] = item.id
        for reason, work_ids in rejected.items():
            self._send_aborted(work_ids, reason)

    def _sampled(self, finished: Finished) -> None:
        work_id = self.by_request.pop(finished.request_id, None)
        held = self.held.get(work_id) if work_id is not None else None
        if held is None or held.request_id != finished.request_id:
            return
        if finished.samples is None:
            self.abort([held.item.id], "the engine aborted the request")
            return
        label = str(held.version)
        if any(sample.versions != {label} for sample in finished.samples):
            seen = sorted(set().union(*(s.versions for s in finished.samples)))
            log.error("version_mismatch", work_id=held.item.id, expected=label, seen=seen)
            self.abort([held.item.id], f"weights changed while sampling (labels {seen})")
            return
        now = time.monotonic()
        held.samples = finished.samples
        held.prompt_token_ids = finished.prompt_token_ids
        held.timings["generate"] = now - held.started
        held.timings["sampled_at"] = time.time()
        held.state = "judging"
        held.judge_started = now
        requests = []
        for index, sample in enumerate(held.samples):
            judge_id = self._judge_id(held.item, index)
            self.by_judge_id[judge_id] = (held.item.id, index, held.item.attempt)
            held.judge_tries[index] = 1
            requests.append(judge_request(held.item, judge_id, sample, held.opened_think))
        self.judge.submit(requests)

    def _judge_id(self, item: WorkItem, index: int) -> str:
        judge_id = f"{item.id}/{index}"
        suffix = 0
        while judge_id in self.by_judge_id:  # an earlier attempt of the item is still being judged
            suffix += 1
            judge_id = f"{item.id}/{index}@{item.attempt}.{suffix}"
        return judge_id

    def _pump_judge(self) -> None:
        if not self.by_judge_id:
            return
        resubmit = []
        for verdict in self.judge.poll(0.0):
            key = self.by_judge_id.pop(verdict.id, None)
            if key is None:
                continue
            work_id, index, attempt = key
            held = self.held.get(work_id)
            if held is None or held.state != "judging" or held.item.attempt != attempt:
                continue  # cancelled or re-issued meanwhile
            tries = held.judge_tries[index]
            if verdict.status in UNJUDGED_STATUSES - {"bad_request"} and tries <= self.cfg.judge_retries:
                log.warning("verdict_retried", id=verdict.id, status=verdict.status, tries=tries)
                held.judge_tries[index] = tries + 1
                self.by_judge_id[verdict.id] = key
                assert held.samples is not None
                resubmit.append(judge_request(held.item, verdict.id, held.samples[index], held.opened_think))
                continue
            held.verdicts[index] = verdict
            if len(held.verdicts) == len(held.samples or ()):
                self._return(held)
        if resubmit:
            self.judge.submit(resubmit)

    def _return(self, held: Held) -> None:
        assert held.samples is not None and held.prompt_token_ids is not None and held.version is not None
        now = time.monotonic()
        held.timings["judge"] = now - held.judge_started
        held.timings["total"] = now - held.received
        held.timings["judged_at"] = time.time()
        group = rollout_group(
            held.item,
            generator_id=self.id,
            policy_version=held.version,
            prompt_token_ids=held.prompt_token_ids,
            samples=held.samples,
            verdicts=[held.verdicts[i] for i in range(len(held.samples))],
            timings={k: round(v, 6) for k, v in held.timings.items()},
        )
        held.state = "returning"
        held.samples = None  # the group holds the arrays now
        self.counts["groups"] += 1
        give_up_at = max(now, held.received + held.item.lease_s) + LATE_ANSWER_GRACE_S
        self._send(group, give_up_at)

    def close(self) -> None:
        """Stop the fetches and the judge client; the engine is closed by its owner."""
        self.fetcher.close()
        self.judge.close()
