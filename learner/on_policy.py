"""The on-policy contract of a run, kept in one object.

Step v trains only on groups sampled with policy versions v - max_staleness .. v, and its update
makes version v + 1. The work ledger (what it issues, accepts and cancels), the run loop's check
of every batch, the held-out evaluation and the trainer all ask an `OnPolicyClock`; none of them
counts steps or versions on its own. A checkpoint saves it once, as the learner's step and policy
version, and `restore` continues from there.

A step that trains no token (every group left out, or every token masked) still finishes: the
weights stay as they are, but the step counts and the version moves on. The schedule, the
checkpoint rhythm and the gate then advance exactly as if it had trained, and generators sample
version v + 1 with the weights of version v. Repeating step v instead would need a second batch
for the same step, and a stage whose batches keep training nothing would never end.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class OnPolicyClock:
    max_staleness: int = 0  # 0: strictly on-policy
    next_step: int = 0  # the step the next batch is for
    version: int = 0  # the weights held now, and the number of steps finished
    published: int = 0  # the newest version generators may sample with

    def admits(self, sample_version: int, step: int | None = None) -> bool:
        """May a group sampled with `sample_version` be trained at `step` (default: the next one)?"""
        step = self.next_step if step is None else step
        return step - self.max_staleness <= sample_version <= step

    def is_current(self, sample_version: int) -> bool:
        """Was it sampled with the weights published now? (What an evaluation scores.)"""
        return sample_version == self.published

    def take(self) -> int:
        """A batch is handed out for step `next_step`; returns that step."""
        step = self.next_step
        self.next_step += 1
        return step

    def finish(self) -> int:
        """The step's update is done, whether or not it trained a token (see the module's
        docstring); returns the new version."""
        self.version += 1
        if self.next_step < self.version:  # a step trained without `take` (a source without a ledger)
            self.next_step = self.version
        return self.version

    def publish(self, version: int) -> None:
        """Generators may now sample with `version`."""
        if version < self.published:
            raise ValueError(f"version {version} is older than the published {self.published}")
        self.published = version

    def restore(self, version: int) -> None:
        """Continue from a checkpoint of `version`: taken between steps, once that version was out."""
        self.next_step = self.version = self.published = version
