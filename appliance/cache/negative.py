"""Upstream 404s remembered briefly: clients probing missing tags (cosign's `.sig` and
`.att` tags, `sha256-<hex>` referrers fallbacks) do not each cost an upstream request.

Keyed by method, URL and credential fingerprint: a 404 seen by one client is replayed
only to the same credential, since some registries answer 404 for "not yours".
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass

from appliance.cache.ports import UpstreamReply

MAX_BODY_BYTES = 64 * 1024
_MAX_ENTRIES = 4096


@dataclass(frozen=True, slots=True)
class MemoryReply:
    """A remembered upstream response, replayable any number of times."""

    status: int
    headers: Mapping[str, str]
    body: bytes

    async def chunks(self) -> AsyncIterator[bytes]:
        yield self.body

    async def read(self, limit: int) -> bytes:
        return self.body[:limit]

    def close(self) -> None:
        return None


class NegativeCache:
    def __init__(self, ttl_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl_s = ttl_s
        self._clock = clock
        self._entries: OrderedDict[tuple[str, ...], tuple[float, MemoryReply]] = OrderedDict()

    def get(self, key: tuple[str, ...]) -> MemoryReply | None:
        entry = self._entries.get(key)
        if entry is None or entry[0] <= self._clock():
            return None
        return entry[1]

    async def remember(self, key: tuple[str, ...], reply: UpstreamReply) -> UpstreamReply:
        """Keep a 404 (its body read and the connection released); others pass as they are."""
        if reply.status != 404 or self._ttl_s <= 0:
            return reply
        try:
            body = await reply.read(MAX_BODY_BYTES)
        finally:
            reply.close()
        memory = MemoryReply(reply.status, _kept(reply.headers), body)
        self._keep(key, memory)
        return memory

    def remember_refusal(self, key: tuple[str, ...], headers: Mapping[str, str]) -> None:
        """The access gate's 404 for content regcache holds, kept like upstream's own."""
        if self._ttl_s > 0:
            self._keep(key, MemoryReply(404, _kept(headers), b""))

    def _keep(self, key: tuple[str, ...], memory: MemoryReply) -> None:
        self._entries.pop(key, None)
        self._entries[key] = (self._clock() + self._ttl_s, memory)
        if len(self._entries) > _MAX_ENTRIES:
            self._entries.popitem(last=False)


def _kept(headers: Mapping[str, str]) -> dict[str, str]:
    """What a replayed refusal is made of (`headers` may match names case-insensitively;
    the copy uses these spellings, whatever upstream's were)."""
    return {
        name: value
        for name in ("WWW-Authenticate", "Retry-After")
        if (value := headers.get(name)) is not None
    }
