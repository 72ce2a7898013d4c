"""Token buckets per key (OCP §9), with time passed in.

A bucket holds up to ``limit`` tokens and refills continuously at
``limit / window`` tokens per second, so an agent may burst its whole
allowance and then proceeds at the average rate. ``take`` answers ``None``
when a token was taken, or the whole number of seconds after which one will
be available (the ``Retry-After`` value, at least 1).

Callers take a token only after a request has been authenticated, so that
forged requests never spend a genuine agent's budget.
"""

from __future__ import annotations

import math
from typing import Final

__all__ = ["RateLimiter"]

_PRUNE_EVERY: Final = 4096


class RateLimiter:
    def __init__(self, *, limit: int, window: float, max_keys: int = 1_000_000) -> None:
        if limit < 1 or window <= 0:
            raise ValueError("a rate limit needs limit >= 1 and window > 0")
        self.limit = limit
        self.window = window
        self._rate = limit / window
        self._max_keys = max_keys
        self._buckets: dict[object, tuple[float, float]] = {}
        self._since_prune = 0

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: object, *, now: float, cost: float = 1.0) -> int | None:
        tokens, stamp = self._buckets.get(key, (float(self.limit), now))
        tokens = min(float(self.limit), tokens + (now - stamp) * self._rate)
        if tokens >= cost:
            self._buckets[key] = (tokens - cost, now)
            self._maybe_prune(now)
            return None
        self._buckets[key] = (tokens, now)
        # The epsilon keeps float error from adding a whole second.
        return max(1, math.ceil((cost - tokens) / self._rate - 1e-9))

    def refund(self, key: object, *, cost: float = 1.0) -> None:
        """Give back tokens taken for a request that turned out not to count."""
        if key in self._buckets:
            tokens, stamp = self._buckets[key]
            self._buckets[key] = (min(float(self.limit), tokens + cost), stamp)

    def prune(self, now: float) -> None:
        """Forget buckets that have refilled completely (they carry no information)."""
        self._buckets = {
            key: value for key, value in self._buckets.items() if now - value[1] < self.window
        }

    def _maybe_prune(self, now: float) -> None:
        self._since_prune += 1
        if self._since_prune < _PRUNE_EVERY and len(self._buckets) <= self._max_keys:
            return
        self._since_prune = 0
        self.prune(now)
