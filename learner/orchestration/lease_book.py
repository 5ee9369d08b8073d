"""The books of work handed to generators: one for training (the work ledger), one per held-out
evaluation round. Both keep them the same way, here.

- A work id is out at most once at a time (one lease), for `lease_s` seconds. The lease ends when
  its answer comes, when it expires, when its generator is lost or hands it back, or when the
  dispatcher cancels it.
- Only the answer to the current attempt counts: a late answer to an earlier attempt, or a
  resend, is dropped.
- Work whose lease ended without a usable answer goes back to the queue, ahead of new work, until
  it has been issued `max_attempts` times; then it is given up (counted in `skipped`).
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog

from proto.prompt import CodePrompt, MathPrompt, Prompt
from proto.rollout import RolloutGroup
from proto.work import SamplingParams, WorkItem

log = structlog.get_logger("learner.lease_book")


@dataclass
class Lease:
    item: WorkItem
    generator_id: str
    issued: float
    deadline: float


class Leases(dict[str, Lease]):
    """Work out now, by work id."""

    def take_back(self, work_ids: list[str], generator_id: str) -> list[str]:
        """End the leases among `work_ids` that `generator_id` holds; returns their ids."""
        ended = [w for w in work_ids if w in self and self[w].generator_id == generator_id]
        for chosen in ended:
            del self[chosen]
        return ended

    def held_by(self, generator_id: str) -> list[str]:
        return [chosen for chosen, lease in self.items() if lease.generator_id == generator_id]

    def unknown_to(self, generator_id: str, held: set[str], issued_before: float) -> list[str]:
        """Leases of `generator_id` issued before `issued_before` for work it says it does not hold."""
        return [
            chosen
            for chosen, lease in self.items()
            if lease.generator_id == generator_id and chosen not in held and lease.issued < issued_before
        ]

    def overdue(self, now: float, lost_generators: set[str]) -> dict[str, list[str]]:
        """End the leases past their deadline or held by lost generators; by generator."""
        ended: dict[str, list[str]] = collections.defaultdict(list)
        for chosen, lease in list(self.items()):
            if lease.deadline < now or lease.generator_id in lost_generators:
                del self[chosen]
                ended[lease.generator_id].append(chosen)
        return dict(ended)


class LeaseBook:
    """Leases, attempts and the queue of work to issue again; the dispatcher drives every book
    the same way (`issue`, `accept`, `release`, `expire`, `leases`)."""

    def __init__(
        self, lease_s: float, max_attempts: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.lease_s = lease_s
        self.max_attempts = max_attempts
        self.clock = clock
        self.queue: collections.deque[str] = collections.deque()  # work ids to issue (again) first
        self.attempts: dict[str, int] = {}
        self.leases = Leases()
        self.counts: collections.Counter[str] = collections.Counter()

    def lease(
        self,
        chosen: str,
        generator_id: str,
        prompt: Prompt,
        *,
        kind: str,
        stage: int,
        version: int,
        template: str,
        sampling: SamplingParams,
    ) -> WorkItem:
        """Hand `chosen` to `generator_id` as its next attempt: the prompt in the stage's template."""
        attempt = self.attempts.get(chosen, 0)
        self.attempts[chosen] = attempt + 1
        item = WorkItem(
            id=chosen,
            kind=kind,
            stage=stage,
            policy_version=version,
            prompt=fill_template(template, prompt.prompt),
            apply_chat_template=True,
            sampling=sampling,
            lease_s=self.lease_s,
            attempt=attempt,
            **judge_fields(prompt),
        )
        now = self.clock()
        self.leases[chosen] = Lease(item, generator_id, now, now + self.lease_s)
        self.counts["issued"] += 1
        return item

    def answered(self, group: RolloutGroup) -> WorkItem | None:
        """End the lease `group` answers and return its item; None if the answer no longer counts
        (a resend, or an answer to an attempt already issued again)."""
        lease = self.leases.get(group.work_id)
        if lease is None or lease.item.attempt != group.attempt:
            return None
        del self.leases[group.work_id]
        return lease.item

    def requeue(self, chosen: str) -> None:
        """Issue `chosen` again, unless it has had its `max_attempts`."""
        if self.attempts.get(chosen, 0) >= self.max_attempts:
            self.counts["skipped"] += 1
            log.warning("prompt_skipped", work_id=chosen, attempts=self.attempts[chosen])
            self.given_up(chosen)
            return
        self.queue.append(chosen)

    def given_up(self, chosen: str) -> None:
        """`chosen` will not be issued again (the work ledger closes it for its epoch)."""

    def release(self, work_ids: list[str], generator_id: str) -> int:
        """A generator hands items back (aborted, shutting down): issue them again."""
        released = self.leases.take_back(work_ids, generator_id)
        for chosen in released:
            self.requeue(chosen)
        self.counts["released"] += len(released)
        return len(released)

    def expire(self, lost_generators: set[str] = frozenset()) -> dict[str, list[str]]:
        """Issue again the leases past their deadline or held by lost generators; returns what to
        cancel, by generator."""
        cancel = self.leases.overdue(self.clock(), lost_generators)
        for work_ids in cancel.values():
            for chosen in work_ids:
                self.requeue(chosen)
            self.counts["expired"] += len(work_ids)
        return cancel


def fill_template(template: str, prompt: str) -> str:
    """The stage's template with the prompt in it. Not `str.format`: a template may hold braces of
    its own (`\\boxed{}`), which format would take for fields."""
    return template.replace("{prompt}", prompt)


def judge_fields(prompt: Prompt) -> dict[str, Any]:
    """What the judge checks a prompt's completions against."""
    if isinstance(prompt, MathPrompt):
        return {"answer": prompt.answer}
    assert isinstance(prompt, CodePrompt)
    return {
        "tests": prompt.tests,
        "fn_name": prompt.fn_name,
        "test_program": prompt.test_program,
        "time_limit_s": prompt.time_limit_s,
        "memory_limit_mb": prompt.memory_limit_mb,
    }
