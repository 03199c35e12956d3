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

import asyncio
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping

from appliance.cache.ports import (
    PublicStatusStore,
    Upstream,
    UpstreamReply,
    UpstreamUnavailable,
)
from appliance.logthrottle import LogThrottle

log = logging.getLogger(__name__)

_MAX_ENTRIES = 65536
_RETRY_DOWN_HOST_S = 10.0


def fingerprint(authorization: str | None) -> str:
    return "" if not authorization else hashlib.sha256(authorization.encode()).hexdigest()[:32]


class _Seen:
    """key → (when it was last seen, value), bounded: the oldest entries go first."""

    def __init__(self) -> None:
        self._entries: OrderedDict[tuple[str, ...], tuple[float, bool]] = OrderedDict()

    def get(self, key: tuple[str, ...], now: float, within_s: float) -> bool | None:
        entry = self._entries.get(key)
        if entry is None or now - entry[0] >= within_s:
            return None
        return entry[1]

    def put(self, key: tuple[str, ...], value: bool, now: float) -> None:
        self._entries.pop(key, None)
        self._entries[key] = (now, value)
        if len(self._entries) > _MAX_ENTRIES:
            self._entries.popitem(last=False)


def _upstream_in_trouble(reply: UpstreamReply) -> bool:
    """5xx and 429: upstream is there but cannot say yes or no right now."""
    return reply.status >= 500 or reply.status == 429


class AccessGate:
    def __init__(
        self,
        upstream: Upstream,
        verified_ttl_s: float = 300.0,
        public_ttl_s: float = 3600.0,
        outage_grace_s: float = 86400.0,
        clock: Callable[[], float] = time.monotonic,
        persisted: PublicStatusStore | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._persisted = persisted
        self._wall_clock = wall_clock
        self._upstream = upstream
        self._verified_ttl_s = verified_ttl_s
        self._public_ttl_s = public_ttl_s
        self._grace_s = max(outage_grace_s, verified_ttl_s, public_ttl_s)
        self._clock = clock
        self._public = _Seen()
        self._verified = _Seen()
        # Hosts that just failed to answer: not asked again for a while, so an outage
        # with connect timeouts does not cost every request two of them.
        self._down_until: dict[str, float] = {}
        self._probes: dict[tuple[str, str], asyncio.Future[bool | None]] = {}
        self._outage_log = LogThrottle(log, interval_s=600.0)

    def note_verified(self, host: str, repository: str, authorization: str | None) -> None:
        """Upstream just answered 200 to this client's credentials for this repository."""
        self._verified.put((host, repository, fingerprint(authorization)), True, self._clock())

    def vouches(self, host: str, repository: str, authorization: str | None) -> bool:
        """Whether what upstream said recently lets this client have the repository's
        content, without asking anything (memory only; safe from any thread). Never
        more permissive than `check`; False means: ask `check`."""
        now = self._clock()
        if self._public.get((host, repository), now, self._public_ttl_s):
            return True
        client = (host, repository, fingerprint(authorization))
        return bool(self._verified.get(client, now, self._verified_ttl_s))

    async def check(
        self, host: str, repository: str, url: str, headers: Mapping[str, str]
    ) -> UpstreamReply | None:
        """None when the client may have `url`'s content from the store, else the upstream
        response that refuses it (for the client, unchanged). Raises UpstreamUnavailable
        when upstream cannot answer and nothing recent enough vouches for the client."""
        now = self._clock()
        repo = (host, repository)
        client = (host, repository, fingerprint(headers.get("Authorization")))
        if self._public.get(repo, now, self._public_ttl_s) is None and not self._down(host, now):
            # Learnt once per repository and hour, also for clients already verified, so
            # that during an outage new clients still get public images.
            await self._shared_probe(repo, url, now)
        if self._public.get(repo, now, self._public_ttl_s):
            return None
        if self._verified.get(client, now, self._verified_ttl_s):
            return None
        if self._down(host, now):  # failed moments ago, or the probe just found it down
            if await self._vouched_in_outage(repo, client, now):
                return None
            raise UpstreamUnavailable(f"{host} does not answer")
        try:
            reply = await self._upstream.fetch("HEAD", url, headers, follow=False)
        except UpstreamUnavailable:
            self._down_until[host] = now + _RETRY_DOWN_HOST_S
            if await self._vouched_in_outage(repo, client, now):
                return None
            raise
        if 200 <= reply.status < 400:  # a redirect is the registry saying yes
            reply.close()
            self._verified.put(client, True, now)
            return None
        if _upstream_in_trouble(reply) and await self._vouched_in_outage(repo, client, now):
            reply.close()
            return None
        log.info(
            "access refused host=%s repository=%s status=%d credential=%s",
            host, repository, reply.status, client[2][:8] or "none",
        )  # fmt: skip
        return reply

    def _down(self, host: str, now: float) -> bool:
        return self._down_until.get(host, 0.0) > now

    async def _vouched_in_outage(
        self, repo: tuple[str, str], client: tuple[str, str, str], now: float
    ) -> bool:
        """Upstream cannot answer: does what it said within the outage grace period
        (public status also from before a restart) vouch for the client?"""
        vouched = bool(
            self._public.get(repo, now, self._grace_s)
            or self._verified.get(client, now, self._grace_s)
        )
        if not vouched and self._persisted is not None:
            status = await self._persisted.public_status(*repo)
            age_s = self._wall_clock() - status[1] if status is not None else self._grace_s
            vouched = status is not None and status[0] and age_s < self._grace_s
        self._outage_log.warning(
            f"{repo[0]}/{repo[1]}/{vouched}",
            "access during-outage host=%s repository=%s allowed=%s",
            repo[0], repo[1], vouched,
        )  # fmt: skip
        return vouched

    async def _shared_probe(self, repo: tuple[str, str], url: str, now: float) -> bool | None:
        """One probe per repository at a time, whatever the number of clients asking."""
        running = self._probes.get(repo)
        if running is not None:
            return await asyncio.shield(running)
        future: asyncio.Future[bool | None] = asyncio.get_running_loop().create_future()
        self._probes[repo] = future
        result: bool | None = None
        try:
            result = await self._probe(repo, url, now)
        finally:
            future.set_result(result)
            del self._probes[repo]
        return result

    async def _probe(self, repo: tuple[str, str], url: str, now: float) -> bool | None:
        """Whether regcache itself can pull `url` anonymously; None if upstream cannot say."""
        try:
            reply = await self._upstream.fetch_anonymous("HEAD", url)
        except UpstreamUnavailable:
            self._down_until[repo[0]] = now + _RETRY_DOWN_HOST_S
            return None
        reply.close()
        if _upstream_in_trouble(reply):
            return None
        public = 200 <= reply.status < 400
        self._public.put(repo, public, now)
        if self._persisted is not None:
            await self._persisted.set_public_status(*repo, public, self._wall_clock())
        log.info("access probed host=%s repository=%s anonymous_status=%d", *repo, reply.status)
        return public
