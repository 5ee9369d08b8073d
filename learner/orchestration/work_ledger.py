"""The dispatcher's bookkeeping: which prompt is out where, and which results may be trained.

No sockets and no threads here: `learner/orchestration/dispatcher.py` drives it. The rules it keeps:
- leases, attempts and re-issues as every book of work keeps them (learner/orchestration/lease_book.py);
- the version gate of the run's `OnPolicyClock` (learner/on_policy.py): a group is accepted only
  if the next step may train it, and work is issued only with the newest published weights and
  only while those are admissible for a step still to be trained;
- nothing of stage s is trained in stage s + 1;
- every returned group is screened here, once (`grpo.screen`): one with an unjudged verdict goes
  back to the queue, one without reward variance is left out under dynamic sampling; a prompt is
  resolved only once, so each counts exactly once;
- a batch is sampled at one temperature: where a stage ramps its temperature, the next epoch
  starts only when every group of the current one is in a batch, and the last batch of the
  epoch may be short.
"""

from __future__ import annotations

import collections
import math
import time
from collections.abc import Callable
from typing import Any

import structlog

from learner.on_policy import OnPolicyClock
from learner.orchestration.lease_book import LeaseBook
from learner.orchestration.prompts import PromptOrder
from learner.orchestration.schedule import Schedule, Stage
from learner.training.grpo import Batch, screen
from proto.judge import REWARDED_STATUSES
from proto.prompt import Prompt
from proto.rollout import RolloutGroup
from proto.work import SamplingParams, WorkItem

log = structlog.get_logger("learner.work_ledger")


def work_id(stage: int, epoch: int, prompt_id: str) -> str:
    return f"{stage}/{epoch}/{prompt_id}"


def split_work_id(value: str) -> tuple[int, int, str]:
    stage, epoch, prompt_id = value.split("/", 2)
    return int(stage), int(epoch), prompt_id


class WorkLedger(LeaseBook):
    def __init__(
        self,
        schedule: Schedule,
        prompt_sets: list[list[Prompt]],  # one per stage, in schedule order
        on_policy: OnPolicyClock | None = None,  # shared with the learner; default: the schedule's
        overissue: float = 1.0,  # with dynamic sampling: issue this times what the batch needs
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if len(prompt_sets) != len(schedule.stages):
            raise ValueError(f"{len(prompt_sets)} prompt sets for {len(schedule.stages)} stages")
        super().__init__(schedule.lease_s, schedule.max_attempts, clock)
        self.schedule = schedule
        self.on_policy = on_policy or OnPolicyClock(schedule.max_staleness)
        self.overissue = overissue if schedule.dynamic_sampling else 1.0
        self.prompts = [{p.id: p for p in prompts} for prompts in prompt_sets]
        self.orders = [
            PromptOrder(list(by_id), seed=f"{schedule.seed}/{index}")
            for index, by_id in enumerate(self.prompts)
        ]
        self.removed: set[str] = set()  # prompts filtered out for the rest of the run
        self.stage_index = 0
        self.stage_steps_taken = 0
        self.ready: list[RolloutGroup] = []
        self.kept: set[str] = set()  # work ids of ready groups without signal, kept to fill a batch
        self.epoch_open: set[str] = set()  # work ids of this epoch issued but not yet resolved
        self.epoch_solved: set[str] = set()  # prompt ids every completion solved this epoch
        self.zero_variance_this_step = 0

    @classmethod
    def evaluation_only(cls, schedule: Schedule, on_policy: OnPolicyClock) -> WorkLedger:
        """A ledger past its last stage: it issues no training work, so that a dispatcher over it
        serves held-out evaluation rounds alone (`python -m learner eval`)."""
        ledger = cls(schedule, [[] for _ in schedule.stages], on_policy)
        ledger.stage_index = len(schedule.stages)
        return ledger

    # -- where the schedule stands ------------------------------------------------------------

    @property
    def done(self) -> bool:
        return self.stage_index >= len(self.schedule.stages)

    @property
    def stage(self) -> Stage:
        return self.schedule.stages[self.stage_index]

    # -- issuing --------------------------------------------------------------------------------

    def wanted(self) -> int:
        """How many more prompts should be out now."""
        gate = self.on_policy
        if self.done or not gate.admits(gate.published):
            return 0
        steps_left = self.stage.steps - self.stage_steps_taken
        # samples of the published version serve steps next_step .. published + max_staleness
        window = min(steps_left, gate.published + gate.max_staleness - gate.next_step + 1)
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
            lease.generator_id == generator_id and lease.item.policy_version < self.on_policy.published
            for lease in self.leases.values()
        )

    def _next_work_id(self) -> str | None:
        if self.queue:
            return self.queue.popleft()
        order = self.orders[self.stage_index]
        prompt_id = order.next()
        if prompt_id is None:
            if self._epoch_end_waits(order):
                return None
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

    def _epoch_end_waits(self, order: PromptOrder) -> bool:
        """Must the next epoch wait? With `filter_solved`, for every result of this one (the filter
        sees the whole epoch); at a new temperature, until every group of this one is in a batch."""
        if self.stage.filter_solved and self.epoch_open:
            return True
        return self._temperature_changes(order) and bool(self.ready or self.leases)

    def _temperature_changes(self, order: PromptOrder) -> bool:
        return self.stage.sampling_at(order.epoch)[1] != self.stage.sampling_at(order.epoch + 1)[1]

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
        n, temperature = stage.sampling_at(epoch)
        return self.lease(
            chosen,
            generator_id,
            self.prompts[stage_index][prompt_id],
            kind=stage.kind,
            stage=stage_index,
            version=self.on_policy.published,
            template=stage.prompt_template,
            sampling=SamplingParams(
                n=n,
                max_tokens=stage.max_response_tokens,
                temperature=temperature,
                top_p=stage.top_p,
                stop=stage.stop,
            ),
        )

    # -- results --------------------------------------------------------------------------------

    def accept(self, group: RolloutGroup) -> str:
        """File a returned group; the answer says what became of it."""
        item = self.answered(group)
        if item is None:
            return self._count("late")
        if (group.policy_version, group.stage, group.temperature) != (
            item.policy_version,
            item.stage,
            item.sampling.temperature,
        ):
            self.requeue(group.work_id)
            return self._count("mismatched")
        if len(group.completions) != item.sampling.n:
            self.requeue(group.work_id)
            return self._count("incomplete")
        worth = screen(group)
        if worth == "unjudged":
            self.requeue(group.work_id)
            log.warning(
                "unjudged_group",
                work_id=group.work_id,
                statuses=sorted({c.judge_status for c in group.completions}),
            )
            return self._count("unjudged")
        if not self.on_policy.admits(group.policy_version):
            self.requeue(group.work_id)
            return self._count("stale")
        self._resolve(group.work_id, solved=all(c.reward == 1 for c in group.completions))
        if worth == "zero_variance" and self.schedule.dynamic_sampling:
            limit = self.schedule.max_zero_variance_batches * self.stage.batch_prompts
            if self.zero_variance_this_step < limit:
                self.zero_variance_this_step += 1
                # what was left out still says how well the policy samples (see sampled_accuracy)
                self.counts["zero_variance_completions"] += len(group.completions)
                self.counts["zero_variance_correct"] += sum(
                    c.judge_status in REWARDED_STATUSES for c in group.completions
                )
                return self._count("zero_variance")
            # past the limit it fills a batch slot so that the step goes on, and trains nothing
            self.counts["zero_variance_kept"] += 1
            self.kept.add(group.work_id)
        self.ready.append(group)
        return self._count("accepted")

    def _count(self, outcome: str) -> str:
        self.counts[outcome] += 1
        return outcome

    def _resolve(self, chosen: str, solved: bool) -> None:
        self.epoch_open.discard(chosen)
        if solved and split_work_id(chosen)[1] == self.orders[self.stage_index].epoch:
            self.epoch_solved.add(split_work_id(chosen)[2])

    def given_up(self, chosen: str) -> None:
        self._resolve(chosen, solved=False)

    # -- the learner's side -----------------------------------------------------------------------

    def take_batch(self) -> tuple[Batch, dict[str, list[str]]] | None:
        """The batch for the clock's next step if enough admissible groups are ready, else None.

        Also returns the leases to cancel: work that can no longer be trained (its version
        will be too old for the next step, or its stage has ended).
        """
        if self.done:
            return None
        for group in [g for g in self.ready if not self.on_policy.admits(g.policy_version)]:
            self.ready.remove(group)
            self.kept.discard(group.work_id)
            self.requeue(group.work_id)
            self.counts["stale"] += 1
        size = self.stage.batch_prompts
        if len(self.ready) < size and not (self.ready and self._held_at_epoch_end()):
            return None
        groups, self.ready = self.ready[:size], self.ready[size:]
        batch = Batch(
            trained=[g for g in groups if g.work_id not in self.kept],
            left_out=[g for g in groups if g.work_id in self.kept],
        )
        self.kept -= {g.work_id for g in groups}
        self.on_policy.take()
        self.zero_variance_this_step = 0
        self.stage_steps_taken += 1
        if self.stage_steps_taken == self.stage.steps:
            return batch, self._end_stage()
        cancel: dict[str, list[str]] = collections.defaultdict(list)
        for chosen, lease in list(self.leases.items()):
            if not self.on_policy.admits(lease.item.policy_version):
                del self.leases[chosen]
                self.requeue(chosen)
                cancel[lease.generator_id].append(chosen)
                self.counts["cancelled"] += 1
        return batch, dict(cancel)

    def bound_to_train(self, exclude: set[str]) -> list[RolloutGroup]:
        """Ready groups (not in `exclude`) that the next `take_batch` will train, whatever else
        comes back first: ready only grows until then, the batch is its first groups, and the
        clock that decides what is admissible does not move before it."""
        return [
            g
            for g in self.ready[: self.stage.batch_prompts]
            if g.work_id not in exclude
            and g.work_id not in self.kept
            and self.on_policy.admits(g.policy_version)
        ]

    def _held_at_epoch_end(self) -> bool:
        """Is the next epoch waiting for the groups in hand, with nothing more of this one to come?"""
        order = self.orders[self.stage_index]
        return order.exhausted and not self.queue and not self.leases and self._temperature_changes(order)

    def _end_stage(self) -> dict[str, list[str]]:
        cancel: dict[str, list[str]] = collections.defaultdict(list)
        for chosen, lease in self.leases.items():
            cancel[lease.generator_id].append(chosen)
        self.counts["cancelled"] += len(self.leases)
        self.counts["discarded_at_stage_end"] += len(self.ready)
        log.info("stage_done", stage=self.stage.name, steps=self.stage_steps_taken)
        self.leases.clear()
        self.ready, self.kept, self.queue = [], set(), collections.deque()
        self.epoch_open, self.epoch_solved = set(), set()
        self.stage_index += 1
        self.stage_steps_taken = 0
        return dict(cancel)

    def publish(self, version: int) -> None:
        """The learner finished a step: generators may now sample with `version`."""
        self.on_policy.publish(version)

    # -- checkpoints ----------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """Everything needed to continue, but the clock (the learner's checkpoint holds it); work
        out or ready now is issued again on restore."""
        pending = list(self.queue) + list(self.leases) + [g.work_id for g in self.ready]
        return {
            "stage_index": self.stage_index,
            "stage_steps_taken": self.stage_steps_taken,
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
        for order, order_state in zip(self.orders, state["orders"], strict=True):
            order.restore(order_state)
        self.removed = set(state["removed"])
        # a restored attempt count keeps max_attempts meaningful; the lease itself is gone
        self.attempts = dict(state["attempts"])
        self.queue = collections.deque(state["pending"])
        self.leases.clear()
        self.ready, self.kept = [], set()
        self.epoch_open = set(state["epoch_open"])
        self.epoch_solved = set(state["epoch_solved"])
        self.counts = collections.Counter(state["counts"])
