"""The generator's session with the learner's work dispatcher: what it sends, and that it arrives.

Everything for the dispatcher goes out through here: `Hello`, `Credit` and `Heartbeat` as they
fall due, and the answers (`RolloutGroup`, `WorkAborted`), resent until acknowledged. Sends never
block the loop: with the learner gone they fail at once and are retried. A heartbeat left
unanswered for `learner_timeout_s` ends the session; from then on every heartbeat goes with a
`Hello`, and once the dispatcher answers, the free credits are offered again.

What the dispatcher pushes (work, cancellations, weight announcements, Shutdown) is handed on to
`on_push`; `on_answered` learns when an answer is settled.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from generator.config import GeneratorConfig
from proto.control import Ack, Error, Heartbeat, Hello
from proto.curve import CurveClientKeys
from proto.message import Message
from proto.rollout import RolloutGroup, WorkAborted
from proto.sockets import Client, SocketLimits
from proto.work import Credit, WorkBatch

log = structlog.get_logger("generator")

Answer = RolloutGroup | WorkAborted
ABANDONED = "abandoned"  # the detail `on_answered` gets for an answer given up on


@dataclass
class Outgoing:
    """An answer resent until the dispatcher acknowledges it."""

    message: Answer
    give_up_at: float
    last_sent: float = float("-inf")
    done: bool = False


class Session:
    """The dispatcher connection of one generator, with its credits, heartbeats and resends.

    `version` and `work_ids` say what the generator holds, for `Hello` and `Heartbeat`.
    """

    def __init__(
        self,
        config: GeneratorConfig,
        *,
        version: Callable[[], int],
        work_ids: Callable[[], list[str]],
        on_push: Callable[[Message], None],
        on_answered: Callable[[Answer, str], None],
    ) -> None:
        self.cfg = config
        self.id = config.generator_id
        self._version = version
        self._work_ids = work_ids
        self._on_push = on_push
        self._on_answered = on_answered
        curve = None if config.learner_key is None else CurveClientKeys(config.learner_key, config.client_key)
        self.connection = Client(
            config.learner, curve=curve, limits=SocketLimits(send_timeout_ms=0, recv_timeout_ms=1_000)
        )
        self.outgoing: dict[bytes, Outgoing] = {}  # wire request id -> answer awaiting its Ack
        self.outstanding_credits = 0
        self.open = False
        self.last_heard = time.monotonic()
        self.last_heartbeat = float("-inf")
        # When the first heartbeat still unanswered was sent. Silence counts from there, not from
        # the last message heard: a long engine step sends nothing, so it is not the learner's.
        self.unanswered_since: float | None = None

    # -- sending ------------------------------------------------------------------------------

    def _send(self, message: Message) -> bytes | None:
        try:
            return self.connection.send(message)
        except TimeoutError:
            return None  # not connected now; resends and the keep-alive try again

    def answer(self, message: Answer, give_up_at: float) -> None:
        """Send `message` and resend it until acknowledged, or until `give_up_at`."""
        self._transmit(Outgoing(message, give_up_at), time.monotonic())

    def _transmit(self, out: Outgoing, now: float) -> None:
        out.last_sent = now
        wire_id = self._send(out.message)
        if wire_id is None:
            wire_id = f"unsent-{id(out)}".encode()
        self.outgoing[wire_id] = out

    def hello(self) -> None:
        # host and pid tell the dispatcher a reconnection (work still held) from a restart
        hello = Hello(
            sender=self.id,
            role="generator",
            host=socket.gethostname(),
            pid=os.getpid(),
            info={"policy_version": str(self._version())},
        )
        self._send(hello)
        self.last_heartbeat = time.monotonic()

    def grant_credits(self, holding: int) -> None:
        """Offer the dispatcher what is free of the credits, beyond `holding` and those offered."""
        if not self.open:
            return
        free = self.cfg.credits - holding - self.outstanding_credits
        if free > 0 and self._send(Credit(generator_id=self.id, credits=free)) is not None:
            self.outstanding_credits += free

    # -- receiving ----------------------------------------------------------------------------

    def pump(self, timeout_ms: int) -> None:
        """Take in everything the dispatcher sent, waiting up to `timeout_ms` for the first."""
        reply = self.connection.recv(timeout_ms)
        while reply is not None:
            self.last_heard = time.monotonic()
            self.unanswered_since = None
            if not self.open:
                self.open = True
                self.outstanding_credits = 0
                log.info("learner_connected", address=self.cfg.learner)
            self._on_message(reply.request_id, reply.message)
            reply = self.connection.recv(0)

    def _on_message(self, request_id: bytes, message: Message) -> None:
        if isinstance(message, Ack):
            out = self.outgoing.pop(request_id, None)
            if out is not None and not out.done:
                self._settle(out, message.detail)
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
                self._settle(out, f"refused: {message.code}")
        else:
            if isinstance(message, WorkBatch):
                self.outstanding_credits = max(0, self.outstanding_credits - len(message.items))
            self._on_push(message)

    def _settle(self, out: Outgoing, detail: str) -> None:
        out.done = True
        for wire_id in [w for w, o in self.outgoing.items() if o is out]:
            del self.outgoing[wire_id]
        self._on_answered(out.message, detail)
        if isinstance(out.message, RolloutGroup):
            log.debug("rollout_acked", work_id=out.message.work_id, detail=detail)

    # -- keeping it alive ---------------------------------------------------------------------

    def resend(self, now: float) -> None:
        """Send again what has waited `resend_s` for its Ack; give up on what is past its time."""
        for out in {id(o): o for o in self.outgoing.values()}.values():
            if out.done or now - out.last_sent < self.cfg.resend_s:
                continue
            if now > out.give_up_at:
                ids = [out.message.work_id] if isinstance(out.message, RolloutGroup) else out.message.work_ids
                log.warning("answer_abandoned", type=out.message.TYPE, ids=list(ids)[:5])
                self._settle(out, ABANDONED)
                continue
            self._transmit(out, now)

    def keep_alive(self, now: float) -> None:
        """Heartbeat when due; notice a learner that stopped answering, and say Hello again."""
        due = now - self.last_heartbeat >= self.cfg.heartbeat_s
        if due or self.unanswered_since is not None:
            # Take in what arrived during the engine step first: an answer to the heartbeat
            # (then the learner is there), and work the next heartbeat must list.
            self.pump(0)
        waited = 0.0 if self.unanswered_since is None else now - self.unanswered_since
        if self.open and waited > self.cfg.learner_timeout_s:
            log.warning(
                "learner_lost", silent_s=round(now - self.last_heard, 1), unanswered_s=round(waited, 1)
            )
            self.open = False
            self.outstanding_credits = 0
        if not due:
            return
        if self.unanswered_since is None:
            self.unanswered_since = now
        if not self.open:
            self.hello()  # the dispatcher may have restarted and forgotten this generator
        work_ids = self._work_ids()
        self._send(
            Heartbeat(
                sender=self.id,
                role="generator",
                time=time.time(),
                policy_version=self._version(),
                holding=len(work_ids),
                work_ids=work_ids,
            )
        )
        self.last_heartbeat = now

    def learner_silent(self, now: float) -> bool:
        """While stopping: no answer for longer than acknowledgements and heartbeats take."""
        return now - self.last_heard > 2 * max(self.cfg.resend_s, self.cfg.heartbeat_s)

    @property
    def pending(self) -> bool:
        """Whether an answer still awaits its acknowledgement."""
        return any(not o.done for o in self.outgoing.values())

    def flush(self, timeout_s: float) -> None:
        """Wait up to `timeout_s` for the acknowledgements still due, resending meanwhile."""
        deadline = time.monotonic() + timeout_s
        while self.pending and time.monotonic() < deadline:
            self.pump(50)
            self.resend(time.monotonic())

    def close(self) -> None:
        self.connection.close()
