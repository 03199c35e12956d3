"""Who may be served what the store holds: no private image reaches the wrong client.

The store is shared by digest across repositories and clients, so every answer that
comes from it (or from a fill in progress) is first checked against upstream for the
repository named in the request:

- a repository regcache itself can pull anonymously is public, for everyone;
- otherwise the client's own credentials must have been accepted by upstream for that
  repository within `verified_ttl_s`: an upstream HEAD with the client's Authorization,
  or the revalidation/fetch it just made, is that proof.

A refusal is upstream's own response (401, 403, 404), relayed unchanged. Credentials are
remembered only as a SHA-256 fingerprint. Keys include the registry host.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping

from appliance.cache.ports import Upstream, UpstreamReply

log = logging.getLogger(__name__)

_MAX_ENTRIES = 65536


def fingerprint(authorization: str | None) -> str:
    return "" if not authorization else hashlib.sha256(authorization.encode()).hexdigest()[:32]


class _Expiring:
    """key → expiry time, bounded (the least recently added go first)."""

    def __init__(self) -> None:
        self._entries: OrderedDict[tuple[str, ...], tuple[float, bool]] = OrderedDict()

    def get(self, key: tuple[str, ...], now: float) -> bool | None:
        entry = self._entries.get(key)
        if entry is None or entry[0] <= now:
            return None
        return entry[1]

    def put(self, key: tuple[str, ...], value: bool, until: float) -> None:
        self._entries.pop(key, None)
        self._entries[key] = (until, value)
        if len(self._entries) > _MAX_ENTRIES:
            self._entries.popitem(last=False)


class AccessGate:
    def __init__(
        self,
        upstream: Upstream,
        verified_ttl_s: float = 300.0,
        public_ttl_s: float = 3600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._upstream = upstream
        self._verified_ttl_s = verified_ttl_s
        self._public_ttl_s = public_ttl_s
        self._clock = clock
        self._public = _Expiring()
        self._verified = _Expiring()

    def note_verified(self, host: str, repository: str, authorization: str | None) -> None:
        """Upstream just answered 200 to this client's credentials for this repository."""
        until = self._clock() + self._verified_ttl_s
        self._verified.put((host, repository, fingerprint(authorization)), True, until)

    async def check(
        self, host: str, repository: str, url: str, headers: Mapping[str, str]
    ) -> UpstreamReply | None:
        """None when the client may have `url`'s content from the store, else the upstream
        response that refuses it (for the client, unchanged)."""
        now = self._clock()
        authorization = headers.get("Authorization")
        if self._public.get((host, repository), now):
            return None
        if self._verified.get((host, repository, fingerprint(authorization)), now):
            return None
        if self._public.get((host, repository), now) is None:
            public = await self._anonymously_pullable(url)
            self._public.put((host, repository), public, now + self._public_ttl_s)
            if public:
                log.info("access public host=%s repository=%s", host, repository)
                return None
        reply = await self._upstream.fetch("HEAD", url, headers, follow=False)
        if 200 <= reply.status < 400:  # a redirect is the registry saying yes
            reply.close()
            self.note_verified(host, repository, authorization)
            return None
        log.info(
            "access refused host=%s repository=%s status=%d credential=%s",
            host, repository, reply.status, fingerprint(authorization)[:8] or "none",
        )  # fmt: skip
        return reply

    async def _anonymously_pullable(self, url: str) -> bool:
        reply = await self._upstream.fetch_anonymous("HEAD", url)
        reply.close()
        return 200 <= reply.status < 400
