"""Forwarded answers reused for as long as their TTLs allow.

A build network asks for the same few names again and again (its mirrors, its git
server, package repositories); each answer is kept by question (name in any letter case,
type, class, and the DO and CD bits, which change what upstream returns), whole, as the
upstream reply it was, so a record in one reply never answers another question: a
forger would have to get a reply for the very question accepted first (RFC 5452 checks,
`client.py`), and the cache adds no other way in. Answers live for their shortest TTL,
at most `max_ttl_s`; negative answers (no such name, no record of that type) for their
SOA's negative TTL (RFC 2308 5), at most three hours, and not at all without an SOA.
Errors and TTL 0 are never kept. Bounded in entries, least recently used out first;
`clear()` empties it (a config reload).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from appliance.dns.wire import Reply
from appliance.kit.bounded import BoundedMap

NEGATIVE_MAX_TTL_S = 10800
"""RFC 2308 5: one to three hours have been found to work well."""


@dataclass(frozen=True, slots=True)
class Hit:
    reply: Reply
    age_s: int
    """Whole seconds since it was stored: every TTL is served that much smaller."""
    exact_until: float
    """Until when (the clock's time) a reply composed now stays exact: the next whole
    second of age, or the end of the entry."""


class AnswerCache:
    def __init__(
        self, entries: int, max_ttl_s: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._max_ttl_s = max_ttl_s
        self._clock = clock
        self._entries: BoundedMap[bytes, tuple[Reply, float, float]] = BoundedMap(
            max(entries, 0), clock=clock
        )
        self.enabled = entries > 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: bytes) -> Hit | None:
        entry = self._entries.use(key)
        if entry is None:
            return None
        reply, stored, expires = entry
        age = int(self._clock() - stored)
        return Hit(reply, age, min(expires, stored + age + 1))

    def put(self, key: bytes, reply: Reply) -> None:
        ttl = reply.cache_ttl(self._max_ttl_s, min(self._max_ttl_s, NEGATIVE_MAX_TTL_S))
        if ttl <= 0 or not self.enabled:
            return
        now = self._clock()
        self._entries.set(key, (reply.capped(ttl), now, now + ttl), ttl_s=ttl)

    def clear(self) -> None:
        self._entries.clear()
