"""Liveness and lifecycle: hello, heartbeats, status, errors, shutdown."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from proto.message import Message

Role = Literal["learner", "generator", "judge", "client"]
ErrorCode = Literal["bad_request", "busy", "unavailable", "not_found", "shutting_down", "internal"]


class Hello(Message):
    """First message of a component to a peer it connects to."""

    TYPE = "hello"

    sender: str = Field(min_length=1, max_length=256)
    role: Role
    host: str = ""
    pid: int = 0
    info: dict[str, str] = {}


class Heartbeat(Message):
    TYPE = "heartbeat"

    sender: str = Field(min_length=1, max_length=256)
    role: Role
    time: float  # sender's clock, seconds since the epoch; for logs only, never compared
    policy_version: int | None = None
    holding: int = Field(default=0, ge=0)  # work items held right now
    # Their ids, when the sender reports them: a lease the dispatcher keeps for work the
    # generator never got (a push lost on the way) is then re-issued at once, not at its deadline.
    work_ids: list[str] | None = Field(default=None, max_length=100_000)


class Ack(Message):
    """Receipt for a message that needs no other answer (a rollout, a heartbeat): resend until acked."""

    TYPE = "ack"

    detail: str = Field(default="", max_length=2000)


class Error(Message):
    """The answer to a request that could not be served. `ref_id`: the request it answers."""

    TYPE = "error"

    code: ErrorCode
    detail: str = Field(max_length=4000)
    ref_id: str | None = None


class Shutdown(Message):
    """Stop taking work; finish or hand back what is held within `deadline_s`."""

    TYPE = "shutdown"

    reason: str = Field(max_length=2000)
    deadline_s: float = Field(default=30.0, ge=0)


class StatusRequest(Message):
    """How does the server stand? The learner's dispatcher answers `Status`; whoever supervises
    the run polls it, e.g. to see that the generators it started have connected."""

    TYPE = "status_request"


class Status(Message):
    """The learner's dispatcher, as it stands."""

    TYPE = "status"

    generators: list[str] = Field(max_length=100_000)  # ids of the generators connected now
    step: int = Field(ge=0)  # the step the next batch is for
    version: int | None = Field(ge=0)  # the newest published policy version; None before the first
    stage: int = Field(ge=0)
    done: bool  # every stage's steps taken
