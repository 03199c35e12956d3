"""Upstream 404s remembered briefly: clients probing missing tags (cosign's `.sig` and
`.att` tags, `sha256-<hex>` referrers fallbacks) do not each cost an upstream request.

Keyed by method, URL and credential fingerprint: a 404 seen by one client is replayed
only to the same credential, since some registries answer 404 for "not yours". A key
starts with the (host, repository) it is about: a write there (a push, cosign's signature
tag) makes its 404s wrong, and `forget` drops them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping

from appliance.cache.answers import MemoryReply
from appliance.cache.ports import UpstreamReply
from appliance.kit.bounded import BoundedMap

MAX_BODY_BYTES = 64 * 1024
_MAX_ENTRIES = 4096


class NegativeCache:
    def __init__(self, ttl_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl_s = ttl_s
        self._entries: BoundedMap[tuple[str, ...], MemoryReply] = BoundedMap(
            _MAX_ENTRIES, ttl_s, clock
        )
        self._writes = 0

    @property
    def epoch(self) -> int:
        """Writes forgotten for so far: a 404 asked for before a later one is not kept
        (it may predate the write)."""
        return self._writes

    def forget(self, places: Collection[tuple[str, str]]) -> int:
        """A write to these (host, repository) places succeeded: their 404s (tags and
        digests, upstream's and the gate's) go. How many went."""
        self._writes += 1
        gone = [key for key in self._entries if key[:2] in places]
        for key in gone:
            self._entries.pop(key)
        return len(gone)

    def get(self, key: tuple[str, ...]) -> MemoryReply | None:
        return self._entries.get(key)

    async def remember(
        self, key: tuple[str, ...], reply: UpstreamReply, epoch: int
    ) -> UpstreamReply:
        """Keep a 404 (its body read and the connection released) asked for at `epoch`,
        unless a write was forgotten since; others pass as they are."""
        if reply.status != 404 or self._ttl_s <= 0 or epoch != self._writes:
            return reply
        try:
            body = await reply.read(MAX_BODY_BYTES)
        finally:
            reply.close()
        memory = MemoryReply(reply.status, _kept(reply.headers), body)
        self._entries.set(key, memory)
        return memory

    def remember_refusal(
        self, key: tuple[str, ...], headers: Mapping[str, str], epoch: int
    ) -> None:
        """The access gate's 404 for content regcache holds, kept like upstream's own."""
        if self._ttl_s > 0 and epoch == self._writes:
            self._entries.set(key, MemoryReply(404, _kept(headers), b""))


def _kept(headers: Mapping[str, str]) -> dict[str, str]:
    """What a replayed refusal is made of (`headers` may match names case-insensitively;
    the copy uses these spellings, whatever upstream's were)."""
    return {
        name: value
        for name in ("WWW-Authenticate", "Retry-After")
        if (value := headers.get(name)) is not None
    }
