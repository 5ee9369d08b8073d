"""What judging one request produced, before it becomes a wire `Verdict`."""

from __future__ import annotations

from typing import NamedTuple

from proto.judge import MAX_DETAIL_CHARS, REWARDED_STATUSES, Verdict, VerdictStatus


class Outcome(NamedTuple):
    status: VerdictStatus
    detail: str = ""

    def verdict(self, request_id: str, truncated: bool = False) -> Verdict:
        """The wire verdict; `truncated` is the request's flag, carried through for the trainer."""
        detail = self.detail
        if len(detail) > MAX_DETAIL_CHARS:
            detail = detail[: MAX_DETAIL_CHARS - 15] + " ...(truncated)"
        return Verdict(
            id=request_id,
            reward=1 if self.status in REWARDED_STATUSES else 0,
            status=self.status,
            detail=detail,
            truncated=truncated,
        )
