"""Counts per verdict status and latency percentiles over the most recent requests."""

from __future__ import annotations

import time
from collections import Counter, deque

LATENCY_WINDOW = 10_000


class JudgeCounters:
    def __init__(self) -> None:
        self.started = time.monotonic()
        self.counts: Counter[str] = Counter()
        self._latencies_ms: deque[float] = deque(maxlen=LATENCY_WINDOW)

    def record(self, status: str, latency_s: float) -> None:
        self.counts[status] += 1
        self._latencies_ms.append(latency_s * 1000.0)

    def count(self, event: str) -> None:
        """Events that are not verdicts (busy replies, rejected frames), kept beside the statuses."""
        self.counts[event] += 1

    def percentiles(self) -> dict[str, float]:
        if not self._latencies_ms:
            return {"p50": 0.0, "p90": 0.0, "p99": 0.0, "max": 0.0}
        ordered = sorted(self._latencies_ms)
        last = len(ordered) - 1

        def at(q: float) -> float:
            return round(ordered[min(last, int(q * len(ordered)))], 3)

        return {"p50": at(0.50), "p90": at(0.90), "p99": at(0.99), "max": round(ordered[-1], 3)}

    @property
    def uptime_s(self) -> float:
        return time.monotonic() - self.started
