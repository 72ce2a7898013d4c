from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ocpd.proto.ratelimit import RateLimiter


def test_burst_then_average_rate() -> None:
    limiter = RateLimiter(limit=1000, window=60)
    assert all(limiter.take("a", now=0) is None for _ in range(1000))
    assert limiter.take("a", now=0) == 1  # the 1,001st message in the minute
    assert limiter.take("b", now=0) is None  # buckets are per key
    assert limiter.take("a", now=0.06) is None  # one token refilled after 60 ms


def test_retry_after_is_exact_whole_seconds() -> None:
    limiter = RateLimiter(limit=5, window=60)
    for _ in range(5):
        assert limiter.take("x", now=100) is None
    assert limiter.take("x", now=100) == 12
    assert limiter.take("x", now=111) == 1
    assert limiter.take("x", now=112) is None


def test_invalid_limits() -> None:
    with pytest.raises(ValueError, match="limit"):
        RateLimiter(limit=0, window=1)


@given(st.lists(st.floats(min_value=0, max_value=1000), min_size=1, max_size=200))
def test_never_more_than_limit_plus_refill(times: list[float]) -> None:
    limiter = RateLimiter(limit=10, window=100)
    times = sorted(times)
    granted = sum(limiter.take("k", now=t) is None for t in times)
    assert granted <= 10 + (times[-1] - times[0]) * 0.1 + 1e-9
