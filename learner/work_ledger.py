"""The dispatcher's bookkeeping: which prompt is out where, and which results may be trained.

No sockets and no threads here: `learner/dispatcher.py` drives it. The rules it keeps:
- a prompt is out at most once at a time (one lease per work id), and the first valid answer of
  its current attempt wins; late answers of earlier attempts and resends are dropped;
- the version gate: step v trains only groups sampled with versions v - max_staleness .. v;
  work is issued only with the newest published weights and only when those are admissible;
- nothing of stage s is trained in stage s + 1;
- a group with an unjudged verdict, a stale version or a lost generator goes back to the
  queue, never into a batch; a prompt is resolved only once, so each counts exactly once.
"""

from __future__ import annotations

import collections
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog

from learner.prompts import CodePrompt, MathPrompt, Prompt, PromptOrder
from learner.schedule import Schedule, Stage
from proto.judge import REWARDED_STATUSES, UNJUDGED_STATUSES
from proto.rollout import RolloutGroup
from proto.work import SamplingParams, WorkItem

log = structlog.get_logger("learner.work_ledger")


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


def work_id(stage: int, epoch: int, prompt_id: str) -> str:
    return f"{stage}/{epoch}/{prompt_id}"


def split_work_id(value: str) -> tuple[int, int, str]:
    stage, epoch, prompt_id = value.split("/", 2)
    return int(stage), int(epoch), prompt_id


class WorkLedger:
    def __init__(
        self,
        schedule: Schedule,
        prompt_sets: list[list[Prompt]],  # one per stage, in schedule order
        overissue: float = 1.0,  # with dynamic sampling: issue this times what the batch needs
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if len(prompt_sets) != len(schedule.stages):
            raise ValueError(f"{len(prompt_sets)} prompt sets for {len(schedule.stages)} stages")
        self.schedule = schedule
        self.overissue = overissue if schedule.dynamic_sampling else 1.0
        self.clock = clock
        self.prompts = [{p.id: p for p in prompts} for prompts in prompt_sets]
        self.orders = [
            PromptOrder(list(by_id), seed=f"{schedule.seed}/{index}")
            for index, by_id in enumerate(self.prompts)
        ]
        self.removed: set[str] = set()  # prompts filtered out for the rest of the run
        self.stage_index = 0
        self.stage_steps_taken = 0
        self.published = 0  # the newest policy version generators can load
        self.next_step = 0  # the step the next batch is for (its samples' versions are gated)
        self.queue: collections.deque[str] = collections.deque()  # work ids to issue again first
        self.attempts: dict[str, int] = {}
        self.leases = Leases()
        self.ready: list[RolloutGroup] = []
        self.epoch_open: set[str] = set()  # work ids of this epoch issued but not yet resolved
        self.epoch_solved: set[str] = set()  # prompt ids every completion solved this epoch
        self.counts: collections.Counter[str] = collections.Counter()
        self.zero_variance_this_step = 0

    # -- where the schedule stands ------------------------------------------------------------

    @property
    def done(self) -> bool:
        return self.stage_index >= len(self.schedule.stages)

    @property
    def stage(self) -> Stage:
        return self.schedule.stages[self.stage_index]

    def admits(self, version: int, step: int) -> bool:
        """The version gate: may a sample of `version` be trained at `step`?"""
        return step - self.schedule.max_staleness <= version <= step

    # -- issuing --------------------------------------------------------------------------------

    def wanted(self) -> int:
        """How many more prompts should be out now."""
        if self.done or not self.admits(self.published, self.next_step):
            return 0
        steps_left = self.stage.steps - self.stage_steps_taken
        # samples of the published version serve steps next_step .. published + max_staleness
        window = min(steps_left, self.published + self.schedule.max_staleness - self.next_step + 1)
        target = math.ceil(window * self.stage.batch_prompts * self.overissue)
        return max(0, target - len(self.ready) - len(self.leases))

    def issue(self, generator_id: str, credits: int) -> list[WorkItem]:
        if self.holds_older_work(generator_id):
            # Newer work makes a generator hand back, unfinished, whatever older work it is still
            # sampling, to switch weights (docs/generator.md). Older work still out is trainable
            # (take_batch cancels what is not), so the newer waits until the older is back.
            return []
        items = []
        for _ in range(min(credits, self.wanted())):
            chosen = self._next_work_id()
            if chosen is None:
                break
            items.append(self._lease(chosen, generator_id))
        return items

    def holds_older_work(self, generator_id: str) -> bool:
        """Does `generator_id` hold work of a version older than the published one?"""
        return any(
            lease.generator_id == generator_id and lease.item.policy_version < self.published
            for lease in self.leases.values()
        )

    def _next_work_id(self) -> str | None:
        if self.queue:
            return self.queue.popleft()
        order = self.orders[self.stage_index]
        prompt_id = order.next()
        if prompt_id is None:
            if self.stage.filter_solved and self.epoch_open:
                return None  # the epoch's results decide what the next epoch leaves out
            self._end_epoch(order)
            if not order.new_epoch():
                log.warning("prompt_set_exhausted", stage=self.stage.name)
                return None
            prompt_id = order.next()
            if prompt_id is None:
                return None
        chosen = work_id(self.stage_index, order.epoch, prompt_id)
        self.epoch_open.add(chosen)
        return chosen

    def _end_epoch(self, order: PromptOrder) -> None:
        if self.stage.filter_solved:
            solved = self.epoch_solved - self.removed
            self.removed |= solved
            for each in self.orders:
                each.remove(solved)
            self.counts["filtered_out"] += len(solved)
            log.info(
                "epoch_filtered",
                stage=self.stage.name,
                epoch=order.epoch,
                removed=len(solved),
                remaining=len(order.ids) - len(order.removed),
            )
        self.epoch_solved = set()
        self.epoch_open = set()

    def _lease(self, chosen: str, generator_id: str) -> WorkItem:
        stage_index, epoch, prompt_id = split_work_id(chosen)
        stage = self.schedule.stages[stage_index]
        prompt = self.prompts[stage_index][prompt_id]
        n, temperature = stage.sampling_at(epoch)
        attempt = self.attempts.get(chosen, 0)
        self.attempts[chosen] = attempt + 1
        item = WorkItem(
            id=chosen,
            kind=stage.kind,
            stage=stage_index,
            policy_version=self.published,
            prompt=stage.prompt_template.format(prompt=prompt.prompt),
            apply_chat_template=True,
            sampling=SamplingParams(
                n=n,
                max_tokens=stage.max_response_tokens,
                temperature=temperature,
                top_p=stage.top_p,
                stop=stage.stop,
            ),
            lease_s=self.schedule.lease_s,
            attempt=attempt,
            **judge_fields(prompt),
        )
        now = self.clock()
        self.leases[chosen] = Lease(item, generator_id, now, now + self.schedule.lease_s)
        self.counts["issued"] += 1
        return item

    # -- results --------------------------------------------------------------------------------

    def accept(self, group: RolloutGroup) -> str:
        """File a returned group; the answer says what became of it."""
        lease = self.leases.get(group.work_id)
        if lease is None or lease.item.attempt != group.attempt:
            return self._count("late")  # a resend, or an answer to an attempt already re-issued
        del self.leases[group.work_id]
        item = lease.item
        if group.policy_version != item.policy_version or group.stage != item.stage:
            self._requeue(group.work_id)
            return self._count("mismatched")
        if len(group.completions) != item.sampling.n:
            self._requeue(group.work_id)
            return self._count("incomplete")
        if any(c.judge_status in UNJUDGED_STATUSES for c in group.completions):
            self._requeue(group.work_id)
            log.warning(
                "unjudged_group",
                work_id=group.work_id,
                statuses=sorted({c.judge_status for c in group.completions}),
            )
            return self._count("unjudged")
        if not self.admits(group.policy_version, self.next_step):
            self._requeue(group.work_id)
            return self._count("stale")
        self._resolve(group.work_id, solved=all(c.reward == 1 for c in group.completions))
        if self.schedule.dynamic_sampling and len({c.reward for c in group.completions}) == 1:
            limit = self.schedule.max_zero_variance_batches * self.stage.batch_prompts
            if self.zero_variance_this_step < limit:
                self.zero_variance_this_step += 1
                # what was left out still says how well the policy samples (see sampled_accuracy)
                self.counts["zero_variance_completions"] += len(group.completions)
                self.counts["zero_variance_correct"] += sum(
                    c.judge_status in REWARDED_STATUSES for c in group.completions
                )
                return self._count("zero_variance")
            self.counts["zero_variance_kept"] += 1
        self.ready.append(group)
        return self._count("accepted")

    def _count(self, outcome: str) -> str:
        self.counts[outcome] += 1
        return outcome

    def _resolve(self, chosen: str, solved: bool) -> None:
        self.epoch_open.discard(chosen)
        if solved and split_work_id(chosen)[1] == self.orders[self.stage_index].epoch:
            self.epoch_solved.add(split_work_id(chosen)[2])

    def _requeue(self, chosen: str) -> None:
        if split_work_id(chosen)[0] != self.stage_index:
            return  # the stage is over
        if self.attempts.get(chosen, 0) >= self.schedule.max_attempts:
            self._resolve(chosen, solved=False)
            self.counts["skipped"] += 1
            log.warning("prompt_skipped", work_id=chosen, attempts=self.attempts[chosen])
            return
        self.queue.append(chosen)

    def release(self, work_ids: list[str], generator_id: str) -> int:
        """A generator hands items back (aborted, shutting down): issue them again."""
        released = self.leases.take_back(work_ids, generator_id)
        for chosen in released:
            self._requeue(chosen)
        self.counts["released"] += len(released)
        return len(released)

    def expire(self, lost_generators: set[str] = frozenset()) -> dict[str, list[str]]:
        """Re-issue leases past their deadline or held by lost generators; returns what to cancel."""
        cancel = self.leases.overdue(self.clock(), lost_generators)
        for work_ids in cancel.values():
            for chosen in work_ids:
                self._requeue(chosen)
            self.counts["expired"] += len(work_ids)
        return cancel

    # -- the learner's side -----------------------------------------------------------------------

    def take_batch(self) -> tuple[list[RolloutGroup], dict[str, list[str]]] | None:
        """The batch for step `next_step` if enough admissible groups are ready, else None.

        Also returns the leases to cancel: work that can no longer be trained (its version
        will be too old for the next step, or its stage has ended).
        """
        if self.done:
            return None
        for group in [g for g in self.ready if not self.admits(g.policy_version, self.next_step)]:
            self.ready.remove(group)
            self._requeue(group.work_id)
            self.counts["stale"] += 1
        size = self.stage.batch_prompts
        if len(self.ready) < size:
            return None
        batch, self.ready = self.ready[:size], self.ready[size:]
        self.next_step += 1
        self.zero_variance_this_step = 0
        self.stage_steps_taken += 1
        if self.stage_steps_taken == self.stage.steps:
            return batch, self._end_stage()
        cancel: dict[str, list[str]] = collections.defaultdict(list)
        for chosen, lease in list(self.leases.items()):
            if not self.admits(lease.item.policy_version, self.next_step):
                del self.leases[chosen]
                self._requeue(chosen)
                cancel[lease.generator_id].append(chosen)
                self.counts["cancelled"] += 1
        return batch, dict(cancel)

    def _end_stage(self) -> dict[str, list[str]]:
        cancel: dict[str, list[str]] = collections.defaultdict(list)
        for chosen, lease in self.leases.items():
            cancel[lease.generator_id].append(chosen)
        self.counts["cancelled"] += len(self.leases)
        self.counts["discarded_at_stage_end"] += len(self.ready)
        log.info("stage_done", stage=self.stage.name, steps=self.stage_steps_taken)
        self.leases, self.ready, self.queue = Leases(), [], collections.deque()
        self.epoch_open, self.epoch_solved = set(), set()
        self.stage_index += 1
        self.stage_steps_taken = 0
        return dict(cancel)

    def publish(self, version: int) -> None:
        """The learner finished a step: generators may now sample with `version`."""
        if version < self.published:
            raise ValueError(f"version {version} is older than the published {self.published}")
        self.published = version

    # -- checkpoints ----------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """Everything needed to continue; work out or ready now is issued again on restore."""
        pending = list(self.queue) + list(self.leases) + [g.work_id for g in self.ready]
        return {
            "stage_index": self.stage_index,
            "stage_steps_taken": self.stage_steps_taken,
            "published": self.published,
            "next_step": self.next_step,
            "orders": [order.state() for order in self.orders],
            "removed": sorted(self.removed),
            "pending": pending,
            "attempts": {chosen: self.attempts.get(chosen, 0) for chosen in pending},
            "epoch_open": sorted(self.epoch_open),
            "epoch_solved": sorted(self.epoch_solved),
            "counts": dict(self.counts),
        }

    def restore(self, state: dict[str, Any]) -> None:
        self.stage_index = state["stage_index"]
        self.stage_steps_taken = state["stage_steps_taken"]
        self.published = state["published"]
        self.next_step = state["next_step"]
        for order, order_state in zip(self.orders, state["orders"], strict=True):
            order.restore(order_state)
        self.removed = set(state["removed"])
        # a restored attempt count keeps max_attempts meaningful; the lease itself is gone
        self.attempts = dict(state["attempts"])
        self.queue = collections.deque(state["pending"])
        self.leases, self.ready = Leases(), []
        self.epoch_open = set(state["epoch_open"])
        self.epoch_solved = set(state["epoch_solved"])
        self.counts = collections.Counter(state["counts"])


def judge_fields(prompt: Prompt) -> dict[str, Any]:
    if isinstance(prompt, MathPrompt):
        return {"answer": prompt.answer}
    assert isinstance(prompt, CodePrompt)
    return {
        "tests": prompt.tests,
        "fn_name": prompt.fn_name,
        "time_limit_s": prompt.time_limit_s,
        "memory_limit_mb": prompt.memory_limit_mb,
    }
