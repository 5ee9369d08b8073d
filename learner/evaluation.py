"""One held-out evaluation round: every prompt of a set sampled with the current weights through
the same generators and judge as training, scored, and never trained on.

The dispatcher gives an open round's items priority over training work. avg@k is the mean
reward over all k completions of every prompt (pass@1 estimated from k samples); greedy is
n = 1 at temperature 0. A prompt whose verdicts could not be obtained is re-issued, and after
`max_attempts` left out of the score (counted in `skipped`), never scored as wrong.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable

from learner.prompts import Prompt
from learner.work_ledger import Lease, Leases, judge_fields
from proto.judge import UNJUDGED_STATUSES
from proto.rollout import RolloutGroup
from proto.work import SamplingParams, WorkItem

PREFIX = "eval/"


class EvalRound:
    def __init__(
        self,
        tag: str,
        kind: str,
        prompts: list[Prompt],
        sampling: SamplingParams,
        *,
        version: int,
        stage: int,
        lease_s: float,
        max_attempts: int = 3,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.tag, self.kind, self.sampling = tag, kind, sampling
        self.version, self.stage = version, stage
        self.lease_s, self.max_attempts, self.clock = lease_s, max_attempts, clock
        self.prompts = {f"{PREFIX}{tag}/{p.id}": p for p in prompts}
        self.queue = collections.deque(self.prompts)
        self.leases = Leases()
        self.attempts: dict[str, int] = {}
        self.results: dict[str, RolloutGroup] = {}
        self.skipped = 0

    @property
    def done(self) -> bool:
        return not self.queue and not self.leases

    def accuracy(self) -> float:
        rewards = [c.reward for group in self.results.values() for c in group.completions]
        return sum(rewards) / len(rewards) if rewards else 0.0

    def issue(self, generator_id: str, credits: int) -> list[WorkItem]:
        items = []
        while self.queue and len(items) < credits:
            chosen = self.queue.popleft()
            attempt = self.attempts.get(chosen, 0)
            self.attempts[chosen] = attempt + 1
            prompt = self.prompts[chosen]
            item = WorkItem(
                id=chosen,
                kind=self.kind,
                stage=self.stage,
                policy_version=self.version,
                prompt=prompt.prompt,
                sampling=self.sampling,
                lease_s=self.lease_s,
                attempt=attempt,
                **judge_fields(prompt),
            )
            now = self.clock()
            self.leases[chosen] = Lease(item, generator_id, now, now + self.lease_s)
            items.append(item)
        return items

    def accept(self, group: RolloutGroup) -> str:
        lease = self.leases.get(group.work_id)
        if lease is None or lease.item.attempt != group.attempt:
            return "late"
        del self.leases[group.work_id]
        if (
            group.policy_version != self.version
            or len(group.completions) != self.sampling.n
            or any(c.judge_status in UNJUDGED_STATUSES for c in group.completions)
        ):
            self._requeue(group.work_id)
            return "retry"
        self.results[group.work_id] = group
        return "scored"

    def _requeue(self, chosen: str) -> None:
        if self.attempts.get(chosen, 0) >= self.max_attempts:
            self.skipped += 1
        else:
            self.queue.append(chosen)

    def release(self, work_ids: list[str], generator_id: str) -> int:
        released = self.leases.take_back(work_ids, generator_id)
        for chosen in released:
            self._requeue(chosen)
        return len(released)

    def expire(self, lost_generators: set[str]) -> dict[str, list[str]]:
        cancel = self.leases.overdue(self.clock(), lost_generators)
        for work_ids in cancel.values():
            for chosen in work_ids:
                self._requeue(chosen)
        return cancel
