"""Hosts no connection could be made to, remembered so that an outage costs one connect
timeout, not one per request.

A blackholed upstream (packets dropped, not refused) makes every connection attempt wait
the full connect timeout; without a memory each ping, token step, tag revalidation and
access check of a cached pull would wait it again (issue #15). Every request regcache
makes goes through `UpstreamClient._send`, which asks here first:

- after a failure, the host is not tried for `retry_s`, counted from the failure (not
  from when the attempt started, which a timeout would leave already expired);
- then one request tries (it gets `connect_s` to do so) while every other still fails at
  once; its success forgets the failure, its failure starts the next `retry_s`.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from appliance.kit.bounded import BoundedMap

RETRY_S = 10.0
_MAX_HOSTS = 1024


class Outages:
    def __init__(
        self,
        connect_s: float,
        retry_s: float = RETRY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._connect_s = connect_s
        self._retry_s = retry_s
        self._clock = clock
        # authority → (not tried before, the failure met)
        self._down: BoundedMap[str, tuple[float, str]] = BoundedMap(_MAX_HOSTS)

    def refusal(self, authority: str) -> str | None:
        """The failure to give now instead of connecting to `authority`, or None to go
        ahead (when it was down, the caller is the one that tries again)."""
        down = self._down.get(authority)
        if down is None:
            return None
        now = self._clock()
        not_before, failure = down
        if now < not_before:
            return failure
        # This caller tries: the others keep failing fast until it knows, or until it
        # would have timed out (it may have been cancelled and never say).
        self._down.set(authority, (now + self._connect_s + 1.0, failure))
        return None

    def failed(self, authority: str, failure: str) -> None:
        """No connection could be made: not tried again for `retry_s` from now."""
        self._down.set(authority, (self._clock() + self._retry_s, failure))

    def connected(self, authority: str) -> None:
        """A connection was made (or reused): the host is not down."""
        if authority in self._down:
            self._down.pop(authority)
