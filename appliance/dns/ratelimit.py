"""Per-client token buckets for the DNS responder, in a bounded LRU table."""

from __future__ import annotations

import time
from collections.abc import Callable

from appliance.kit.bounded import BoundedMap


class RateLimiter:
    def __init__(
        self,
        rate_per_s: float,
        burst: int,
        max_clients: int = 65536,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._rate = rate_per_s
        self._burst = float(burst)
        self._clock = clock
        # The least recently seen clients are forgotten first.
        self._buckets: BoundedMap[str, tuple[float, float]] = BoundedMap(max_clients)

    def allow(self, client: str) -> bool:
        """Take one token for `client`; always True when the rate is 0 (disabled)."""
        if self._rate <= 0:
            return True
        now = self._clock()
        tokens, last = self._buckets.get(client) or (self._burst, now)
        tokens = min(self._burst, tokens + (now - last) * self._rate)
        allowed = tokens >= 1.0
        self._buckets.set(client, (tokens - 1.0 if allowed else tokens, now))
        return allowed
