"""The one place ocpd reads the wall clock (for signed timestamps).

Durations, timeouts and schedules use trio's clock; only timestamps that go
into signed artifacts or are compared with them need the epoch. Tests replace
this object to pin time.
"""

from __future__ import annotations

import time

__all__ = ["WallClock"]


class WallClock:
    def now(self) -> float:
        """Seconds since the Unix epoch."""
        return time.time()
