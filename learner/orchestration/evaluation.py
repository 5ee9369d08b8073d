"""One held-out evaluation round: every prompt of a set sampled with the current weights through
the same generators and judge as training, scored, and never trained on.

The dispatcher gives an open round's items priority over training work. Prompts go out in the
template and with the stop strings of a stage of their task, as in training. avg@k is the mean
reward over all k completions of every prompt (pass@1 estimated from k samples); greedy is
n = 1 at temperature 0. A prompt whose verdicts could not be obtained is re-issued, and after
`max_attempts` left out of the score (counted in `skipped`), never scored as wrong.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from learner.on_policy import OnPolicyClock
from learner.orchestration.lease_book import LeaseBook
from learner.training.grpo import is_unjudged
from proto.prompt import Prompt
from proto.rollout import RolloutGroup
from proto.work import SamplingParams, WorkItem

PREFIX = "eval/"


class EvalRound(LeaseBook):
    def __init__(
        self,
        tag: str,
        kind: str,
        prompts: list[Prompt],
        sampling: SamplingParams,
        *,
        on_policy: OnPolicyClock,
        stage: int,
        lease_s: float,
        template: str = "{prompt}",
        max_attempts: int = 3,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(lease_s, max_attempts, clock)
        self.tag, self.kind, self.sampling, self.template = tag, kind, sampling, template
        self.on_policy, self.stage = on_policy, stage
        self.prompts = {f"{PREFIX}{tag}/{p.id}": p for p in prompts}
        self.queue.extend(self.prompts)
        self.results: dict[str, RolloutGroup] = {}

    @property
    def done(self) -> bool:
        return not self.queue and not self.leases

    @property
    def skipped(self) -> int:
        return self.counts["skipped"]

    def accuracy(self) -> float:
        rewards = [c.reward for group in self.results.values() for c in group.completions]
        return sum(rewards) / len(rewards) if rewards else 0.0

    def issue(self, generator_id: str, credits: int) -> list[WorkItem]:
        items = []
        while self.queue and len(items) < credits:
            chosen = self.queue.popleft()
            items.append(
                self.lease(
                    chosen,
                    generator_id,
                    self.prompts[chosen],
                    kind=self.kind,
                    stage=self.stage,
                    version=self.on_policy.published,
                    template=self.template,
                    sampling=self.sampling,
                )
            )
        return items

    def accept(self, group: RolloutGroup) -> str:
        if self.answered(group) is None:
            return "late"
        if (
            not self.on_policy.is_current(group.policy_version)
            or len(group.completions) != self.sampling.n
            or is_unjudged(group)
        ):
            self.requeue(group.work_id)
            return "retry"
        self.results[group.work_id] = group
        return "scored"
