"""The learner's ranks: rank 0 leads, the others follow.

Rank 0 alone holds the dispatcher, the ledger, the publisher and the metrics. Everything that
needs every rank (a training step, gathering the weights to publish, a checkpoint) starts with
rank 0 telling the others what to do, on a control group of its own:

    rank 0:   tell("step", [shard for each rank])  ->  the step, as every rank does
    rank r:   op, payload = receive()              ->  the same step on its shard

The control group is gloo (it carries Python objects, on any device) with a long timeout:
between two orders rank 0 may wait for a batch or evaluate for a long time. If rank 0 dies,
torchrun stops the others.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

import torch.distributed as dist

# Orders rank 0 gives; each names what every rank then does together.
STEP, WEIGHTS, SAVE, STOP = "step", "weights", "save", "stop"


def component_name() -> str:
    """The name this process logs under: `learner`, or `learner.rank<R>` for a rank but the first
    (torchrun's RANK, known before the process group is)."""
    rank = os.environ.get("RANK", "0")
    return "learner" if rank == "0" else f"learner.rank{rank}"


class RankGroup:
    """This process's place among the learner's ranks and the channel rank 0 leads them by."""

    def __init__(self, timeout_s: float = 6 * 3600.0) -> None:
        self.size = dist.get_world_size() if dist.is_initialized() else 1
        self.rank = dist.get_rank() if dist.is_initialized() else 0
        self.group = None
        if self.size > 1:
            self.group = dist.new_group(backend="gloo", timeout=timedelta(seconds=timeout_s))

    @property
    def leads(self) -> bool:
        return self.rank == 0

    def tell(self, op: str, payloads: list[Any] | None = None) -> Any:
        """On rank 0: give every rank `op` with its payload (`payloads[r]`); returns rank 0's."""
        if self.size == 1:
            return payloads[0] if payloads else None
        assert self.leads, "only rank 0 gives orders"
        payloads = payloads or [None] * self.size
        if len(payloads) != self.size:
            raise ValueError(f"{op}: {len(payloads)} payloads for {self.size} ranks")
        return self._scatter([(op, p) for p in payloads])[1]

    def receive(self) -> tuple[str, Any]:
        """On a rank other than 0: the next order and this rank's payload."""
        return self._scatter(None)

    def _scatter(self, orders: list[tuple[str, Any]] | None) -> tuple[str, Any]:
        out: list[Any] = [None]
        dist.scatter_object_list(out, orders, src=0, group=self.group)
        return out[0]
