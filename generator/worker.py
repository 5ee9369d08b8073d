"""The generator's loop: take work from the dispatcher, sample it, judge it, return it.

One thread drives everything that must stay in order (the dispatcher socket, the engine, the
judge client); only weight downloads run beside it. Each turn of the loop reads what the
dispatcher pushed, collects verdicts, switches weights when work needs a newer version, starts
queued work, runs one engine step, and resends what was not acknowledged.

The on-policy rule: an item is sampled only by the version it names. When work for a newer
version arrives, every older item not yet sampled is aborted and handed back (WorkAborted)
before the new weights are loaded, so no group mixes versions and none is returned as newer
than the weights that produced it. vLLM's own weight-version labels on every sample are checked
against the version the group claims.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import structlog

from generator.config import GeneratorConfig
from generator.engine import Engine, Finished, PromptError, Sample
from generator.rollout import judge_request, rollout_group
from generator.weight_fetch import FetchError, WeightFetcher
from generator.weight_set import Arrivals, WeightSet
from judge.client import JudgeClient
from proto.control import Ack, Error, Heartbeat, Hello, Shutdown
from proto.curve import CurveClientKeys
from proto.judge import UNJUDGED_STATUSES, Verdict
from proto.message import Message
from proto.rollout import RolloutGroup, WorkAborted
from proto.sockets import Client, SocketLimits
from proto.weights import WeightAnnounce
from proto.work import Credit, WorkBatch, WorkCancel, WorkItem

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
    samples: list[Sample] | None = None
    verdicts: dict[int, Verdict] = field(default_factory=dict)
    judge_tries: dict[int, int] = field(default_factory=dict)
    judge_started: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class Outgoing:
    """A message resent until the dispatcher acknowledges it."""

    message: RolloutGroup | WorkAborted
    give_up_at: float
    last_sent: float = float("-inf")
    done: bool = False


def _client_keys(server_key: Any, client_key: Any) -> CurveClientKeys | None:
    return None if server_key is None else CurveClientKeys(server_key, client_key)


class Worker:
    def __init__(self, config: GeneratorConfig, engine: Engine) -> None:
        self.cfg = config
        self.engine = engine
        self.id = config.generator_id
        self.capacity = config.credits
        # Sends never block the loop: with the learner gone they fail at once and are retried.
        limits = SocketLimits(send_timeout_ms=0, recv_timeout_ms=1_000)
        self.dispatcher = Client(
            config.learner, curve=_client_keys(config.learner_key, config.client_key), limits=limits
        )
        self.judge = JudgeClient(
            config.judge,
            curve=_client_keys(config.judge_key, config.client_key),
            request_timeout_s=config.judge_timeout_s,
            attempts=2,
        )
        self.fetcher = WeightFetcher(
            self.id,
            curve=_client_keys(config.weights_key or config.learner_key, config.client_key),
            timeout_s=config.weight_timeout_s,
        )
        self.held: dict[str, Held] = {}
        self.queue: deque[str] = deque()
        self.by_request: dict[str, str] = {}  # engine request id -> work id
        self.by_judge_id: dict[str, tuple[str, int, int]] = {}  # judge id -> (work id, index, attempt)
        self.outgoing: dict[bytes, Outgoing] = {}  # wire request id -> message awaiting its Ack
        self.announce: WeightAnnounce | None = None
        self.arriving: Arrivals | None = None  # the version being loaded while it arrives
        self.arrived_seen: tuple[Arrivals | None, int] = (None, 0)  # its tensors loaded so far
        self.outstanding_credits = 0
        self.session_open = False
        now = time.monotonic()
        self.last_heard = now
        self.last_heartbeat = float("-inf")
        # When the first heartbeat still unanswered was sent. Silence counts from there, not from
        # the last message heard: a long engine step sends nothing, so it is not the learner's.
        self.unanswered_since: float | None = None
        self.stop_deadline: float | None = None
        self._signal: str | None = None
        self.counts: dict[str, int] = {"groups": 0, "aborted": 0, "cancelled": 0, "weight_loads": 0}

    # -- the loop -----------------------------------------------------------------------------

    def run(self) -> int:
        """Serve until shut down; the process exit code."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        log.info(
            "generator_started", generator=self.id, learner=self.cfg.learner, version=self.engine.version
        )
        if self.cfg.warm_reload and self.engine.partial_loads:
            try:
                self.engine.warm_reload(self.fetcher.files)
            except Exception:
                log.exception("warm_reload_failed")  # every update would fail the same way
                self.close()
                return 1
        self._hello()
        code = 0
        try:
            while not self._finished_stopping():
                self.turn()
        except Exception as exc:
            log.exception("generator_failed")
            self._hand_back_all(f"generator failure: {type(exc).__name__}: {exc}")
            self._flush_acks(5.0)
            code = 1
        finally:
            self.close()
        log.info("generator_stopped", generator=self.id, **self.counts)
        return code

    def turn(self) -> None:
        """One pass of the loop (tests drive it directly)."""
        if self._signal is not None:
            self.begin_stop(f"{self._signal} received", self.cfg.shutdown_grace_s)
            self._signal = None
        # While weights are loaded as they arrive, the loop waits on their arrival instead.
        if not self.engine.busy and self.arriving is None:
            # Verdicts are waited for too: a group goes back as soon as its last one is in.
            peers = [self.dispatcher, self.judge.connection] if self.by_judge_id else [self.dispatcher]
            Client.wait_any(peers, IDLE_WAIT_MS)
        self._pump_dispatcher(0)
        self._pump_judge()
        if self._switch_weights():
            self._start_queued()
        if self.engine.busy:
            for finished in self.engine.step():
                self._sampled(finished)
        now = time.monotonic()
        self._resend(now)
        self._keep_alive(now)
        self._grant_credits()
        if self.stop_deadline is not None and now < self.stop_deadline and self._learner_silent(now):
            # Nobody would take the answers: stop now instead of finishing work for no one.
            log.warning("stopping_without_learner", silent_s=round(now - self.last_heard, 1))
            self.stop_deadline = now
        if self.stop_deadline is not None and now >= self.stop_deadline:
            self._hand_back_all("shutting down")

    def _on_signal(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if self.stop_deadline is not None:
            self.stop_deadline = time.monotonic()  # a second signal: hand back now
        self._signal = name

    # -- the dispatcher -----------------------------------------------------------------------

    def _send(self, message: Message) -> bytes | None:
        try:
            return self.dispatcher.send(message)
        except TimeoutError:
            return None  # not connected now; resends and the keep-alive try again

    def _send_tracked(self, message: RolloutGroup | WorkAborted, give_up_at: float) -> None:
        out = Outgoing(message, give_up_at)
        self._transmit(out, time.monotonic())

    def _transmit(self, out: Outgoing, now: float) -> None:
        out.last_sent = now
        wire_id = self._send(out.message)
        if wire_id is None:
            wire_id = f"unsent-{id(out)}".encode()
        self.outgoing[wire_id] = out

    def _hello(self) -> None:
        # host and pid tell the dispatcher a reconnection (work still held) from a restart
        hello = Hello(
            sender=self.id,
            role="generator",
            host=socket.gethostname(),
            pid=os.getpid(),
            info={"policy_version": str(self.engine.version)},
        )
        self._send(hello)
        self.last_heartbeat = time.monotonic()

    def _pump_dispatcher(self, timeout_ms: int) -> None:
        reply = self.dispatcher.recv(timeout_ms)
        while reply is not None:
            self.last_heard = time.monotonic()
            self.unanswered_since = None
            if not self.session_open:
                self.session_open = True
                self.outstanding_credits = 0
                log.info("learner_connected", address=self.cfg.learner)
            self._on_message(reply.request_id, reply.message)
            reply = self.dispatcher.recv(0)

    def _on_message(self, request_id: bytes, message: Message) -> None:
        if isinstance(message, Ack):
            out = self.outgoing.pop(request_id, None)
            if out is not None and not out.done:
                self._acknowledged(out, message.detail)
        elif isinstance(message, Error):
            out = self.outgoing.pop(request_id, None)
            if out is None:
                log.warning("dispatcher_error", code=message.code, detail=message.detail[:300])
            elif message.code in ("busy", "unavailable", "shutting_down"):
                out.last_sent = time.monotonic()  # try again after the resend interval
                self.outgoing[f"retry-{id(out)}".encode()] = out
            elif not out.done:
                log.error(
                    "dispatcher_refused",
                    type=out.message.TYPE,
                    code=message.code,
                    detail=message.detail[:300],
                )
                self._acknowledged(out, f"refused: {message.code}")
        elif isinstance(message, WorkBatch):
            self._take(message.items)
        elif isinstance(message, WorkCancel):
            self._cancel(message.work_ids, message.reason)
        elif isinstance(message, WeightAnnounce):
            if self.announce is None or message.version > self.announce.version:
                self.announce = message
                log.info("weights_announced", version=message.version, bytes=message.total_bytes)
                if message.version > self.engine.version:
                    self.fetcher.want(message.version, self._weights_address(message), message)
        elif isinstance(message, Shutdown):
            self.begin_stop(f"shutdown: {message.reason}", min(message.deadline_s, self.cfg.shutdown_grace_s))
        else:
            log.warning("unexpected_message", type=message.TYPE)

    def _acknowledged(self, out: Outgoing, detail: str) -> None:
        out.done = True
        for wire_id in [w for w, o in self.outgoing.items() if o is out]:
            del self.outgoing[wire_id]
        if isinstance(out.message, RolloutGroup):
            group = out.message
            held = self.held.get(group.work_id)
            if held is not None and held.state == "returning" and held.item.attempt == group.attempt:
                del self.held[group.work_id]
            log.debug("rollout_acked", work_id=group.work_id, detail=detail)

    def _resend(self, now: float) -> None:
        for out in {id(o): o for o in self.outgoing.values()}.values():
            if out.done or now - out.last_sent < self.cfg.resend_s:
                continue
            if now > out.give_up_at:
                log.warning("answer_abandoned", type=out.message.TYPE, ids=self._ids_of(out.message)[:5])
                self._acknowledged(out, "abandoned")
                if isinstance(out.message, RolloutGroup):
                    self.held.pop(out.message.work_id, None)
                continue
            self._transmit(out, now)

    @staticmethod
    def _ids_of(message: RolloutGroup | WorkAborted) -> list[str]:
        return [message.work_id] if isinstance(message, RolloutGroup) else list(message.work_ids)

    def _keep_alive(self, now: float) -> None:
        due = now - self.last_heartbeat >= self.cfg.heartbeat_s
        if due or self.unanswered_since is not None:
            # Take in what arrived during the engine step first: an answer to the heartbeat
            # (then the learner is there), and work the next heartbeat must list.
            self._pump_dispatcher(0)
        waited = 0.0 if self.unanswered_since is None else now - self.unanswered_since
        if self.session_open and waited > self.cfg.learner_timeout_s:
            log.warning(
                "learner_lost", silent_s=round(now - self.last_heard, 1), unanswered_s=round(waited, 1)
            )
            self.session_open = False
            self.outstanding_credits = 0
        if not due:
            return
        if self.unanswered_since is None:
            self.unanswered_since = now
        if not self.session_open:
            self._hello()  # the dispatcher may have restarted and forgotten this generator
        self._send(
            Heartbeat(
                sender=self.id,
                role="generator",
                time=time.time(),
                policy_version=self.engine.version,
                holding=len(self.held),
                work_ids=sorted(self.held),
            )
        )
        self.last_heartbeat = now

    def _grant_credits(self) -> None:
        if not self.session_open or self.stop_deadline is not None:
            return
        free = self.capacity - len(self.held) - self.outstanding_credits
        if free > 0 and self._send(Credit(generator_id=self.id, credits=free)) is not None:
            self.outstanding_credits += free

    # -- work in, work back -------------------------------------------------------------------

    def _take(self, items: list[WorkItem]) -> None:
        self.outstanding_credits = max(0, self.outstanding_credits - len(items))
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
            if self.stop_deadline is not None:
                reason = "shutting down"
            elif len(self.held) >= self.capacity:
                reason = f"over credit: holding {len(self.held)} of {self.capacity}"
            elif item.policy_version < self.engine.version:
                reason = f"stale version: v{item.policy_version} asked, engine holds v{self.engine.version}"
            if reason is not None:
                refused.setdefault(reason, []).append(item.id)
                continue
            self.held[item.id] = Held(item, received=now)
            self.queue.append(item.id)
        for reason, work_ids in refused.items():
            self._send_aborted(work_ids, reason)

    def _cancel(self, work_ids: list[str], reason: str) -> None:
        cancelled = [w for w in work_ids if w in self.held and self.held[w].state != "returning"]
        for work_id in cancelled:
            self._forget(self.held[work_id])
        self.counts["cancelled"] += len(cancelled)
        if cancelled:
            log.info("work_cancelled", count=len(cancelled), reason=reason)

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
        self._send_tracked(message, time.monotonic() + LATE_ANSWER_GRACE_S)

    def _abort(self, work_ids: list[str], reason: str) -> None:
        for work_id in work_ids:
            held = self.held.get(work_id)
            if held is not None:
                self._forget(held)
        self._send_aborted(work_ids, reason)

    def _hand_back_all(self, reason: str) -> None:
        """Everything not already answered goes back to the dispatcher."""
        self._abort([w for w, h in self.held.items() if h.state != "returning"], reason)

    # -- weights ------------------------------------------------------------------------------

    def _weights_address(self, announce: WeightAnnounce | None) -> str:
        if self.cfg.weights:  # given by the operator: the publisher as this machine reaches it
            return self.cfg.weights
        for candidate in (announce, self.announce):
            if candidate is not None and candidate.address:
                return candidate.address
        return self.cfg.weights or self.cfg.learner

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
            self._abort(stale, f"stale version: v{target} is required now")
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
            self._abort([w for w in self.queue if self.held[w].item.policy_version == target], str(result))
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
            self.by_request[held.request_id] = item.id
        for reason, work_ids in rejected.items():
            self._send_aborted(work_ids, reason)

    def _sampled(self, finished: Finished) -> None:
        work_id = self.by_request.pop(finished.request_id, None)
        held = self.held.get(work_id) if work_id is not None else None
        if held is None or held.request_id != finished.request_id:
            return
        if finished.samples is None:
            self._abort([held.item.id], "the engine aborted the request")
            return
        label = str(held.version)
        if any(sample.versions != {label} for sample in finished.samples):
            seen = sorted(set().union(*(s.versions for s in finished.samples)))
            log.error("version_mismatch", work_id=held.item.id, expected=label, seen=seen)
            self._abort([held.item.id], f"weights changed while sampling (labels {seen})")
            return
        now = time.monotonic()
        held.samples = finished.samples
        held.prompt_token_ids = finished.prompt_token_ids
        held.timings["generate"] = now - held.started
        held.state = "judging"
        held.judge_started = now
        requests = []
        for index, sample in enumerate(held.samples):
            judge_id = self._judge_id(held.item, index)
            self.by_judge_id[judge_id] = (held.item.id, index, held.item.attempt)
            held.judge_tries[index] = 1
            requests.append(judge_request(held.item, judge_id, sample))
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
                resubmit.append(judge_request(held.item, verdict.id, held.samples[index]))
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
        self._send_tracked(group, give_up_at)

    # -- shutdown -----------------------------------------------------------------------------

    def begin_stop(self, reason: str, grace_s: float) -> None:
        """Take no more work; finish what is running within `grace_s`, then hand the rest back."""
        deadline = time.monotonic() + grace_s
        if self.stop_deadline is not None:
            self.stop_deadline = min(self.stop_deadline, deadline)
            return
        log.info("generator_stopping", reason=reason, grace_s=grace_s, holding=len(self.held))
        self.stop_deadline = deadline
        self._abort([w for w in self.queue], "shutting down")

    def _finished_stopping(self) -> bool:
        if self.stop_deadline is None:
            return False
        if any(h.state != "returning" for h in self.held.values()):
            return False
        pending = any(not o.done for o in self.outgoing.values())
        now = time.monotonic()
        # Past the deadline, wait a little longer for the last acknowledgements only.
        return not pending or now > self.stop_deadline + 2 * self.cfg.resend_s or self._learner_silent(now)

    def _learner_silent(self, now: float) -> bool:
        """While stopping: no answer for longer than acknowledgements and heartbeats take."""
        return now - self.last_heard > 2 * max(self.cfg.resend_s, self.cfg.heartbeat_s)

    def _flush_acks(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while any(not o.done for o in self.outgoing.values()) and time.monotonic() < deadline:
            self._pump_dispatcher(50)
            self._resend(time.monotonic())

    def close(self) -> None:
        self.fetcher.close()
        self.judge.close()
        self.dispatcher.close()
        self.engine.close()
