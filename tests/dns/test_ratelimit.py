"""Per-client token buckets, on a fake clock."""

from __future__ import annotations

from appliance.dns.ratelimit import RateLimiter


def test_rate_limiter_allows_burst_then_rate() -> None:
    now = [0.0]
    limiter = RateLimiter(rate_per_s=10, burst=5, clock=lambda: now[0])
    assert [limiter.allow("a") for _ in range(6)] == [True] * 5 + [False]
    assert limiter.allow("b")  # per client
    now[0] += 0.1  # one token back
    assert limiter.allow("a") and not limiter.allow("a")
    assert all(RateLimiter(0, 1).allow("c") for _ in range(100))  # 0 disables
