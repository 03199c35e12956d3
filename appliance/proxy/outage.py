"""What the proxy answers itself while upstream is down or in trouble, and the `/v2/` ping
cache that spares upstream one request per pull.

The `/v2/` ping gets 200 (no challenge, so clients go straight to the pull) and a token
realm gets a token that proves nothing: the access gate still serves only repositories
it knows to be public, or credentials verified before the outage (THREAT_MODEL.md,
upstream outages).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from aiohttp import web
from multidict import CIMultiDict

from appliance.cache.ports import UpstreamUnavailable, in_trouble
from appliance.kit.bounded import BoundedMap
from appliance.kit.logthrottle import LogThrottle
from appliance.proxy.errors import API_VERSION
from appliance.proxy.passthrough import PassThrough, forwarded
from appliance.proxy.site import Site

log = logging.getLogger(__name__)
_outage_log = LogThrottle(log, interval_s=300.0)

_OUTAGE_TOKEN = "regcache-outage-token"  # noqa: S105 - not a credential: it opens nothing
OUTAGE_AUTHORIZATION = f"Bearer {_OUTAGE_TOKEN}"
"""What a client sends after the token step was answered here: the cache takes it for
no credentials at all, as it proves nothing (sent upstream it would only get a 401,
though upstream's registry may be up and only its token realm down)."""


class TokensGiven:
    """When regcache last gave its outage token for each registry's realm. One for the
    process (shared by every serving loop's application): a plain dict keyed by the
    configured registries' names, whose item reads and writes are atomic across threads."""

    TRUST_S = 300.0

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._given: dict[str, float] = {}

    def gave(self, site: Site) -> None:
        self._given[site.registry] = self._clock()

    def realm_down(self, site: Site, authorization: str | None) -> bool:
        """The client holds the outage token, and regcache gave it for this registry
        within the last minutes: its realm is down. A client sending the token at any
        other time is only anonymous; upstream's 401 to it stays a 401."""
        if authorization != OUTAGE_AUTHORIZATION:
            return False
        given = self._given.get(site.registry)
        return given is not None and self._clock() - given < self.TRUST_S


def outage_answer(
    request: web.Request, site: Site, why: str, tokens: TokensGiven
) -> web.Response | None:
    """Upstream is down: answer the steps before a pull so clients get to what is cached
    (the ping of an API host, any GET/HEAD of a token-realm host); None for the rest."""
    if request.method not in ("GET", "HEAD"):
        return None
    if site.api and request.path == "/v2/":
        return ping_answer(request, why)
    if not site.api:
        _outage_log.warning(
            f"token {request.host}", "upstream down: answering the token step host=%s reason=%s",
            request.host, why,
        )  # fmt: skip
        tokens.gave(site)
        return web.json_response(
            {"token": _OUTAGE_TOKEN, "access_token": _OUTAGE_TOKEN, "expires_in": 60}
        )
    return None


def ping_answer(request: web.Request, why: str) -> web.Response:
    """The `/v2/` ping answered while upstream cannot be: 200, no challenge."""
    _outage_log.warning(
        f"ping {request.host}", "upstream down: answering the ping host=%s reason=%s",
        request.host, why,
    )  # fmt: skip
    return web.json_response({}, headers=API_VERSION)


@dataclass(frozen=True, slots=True)
class _Ping:
    status: int
    headers: CIMultiDict[str]
    body: bytes


class PingCache:
    """Upstream's answer to an anonymous `/v2/` ping (200, or 401 naming the token realm)
    is the same for every client: kept for a minute instead of asked per pull."""

    TTL_S = 60.0
    MAX_BODY_BYTES = 64 * 1024
    MAX_ORIGINS = 4096

    def __init__(self, upstream: PassThrough) -> None:
        self._upstream = upstream
        self._answers: BoundedMap[str, _Ping] = BoundedMap(self.MAX_ORIGINS, self.TTL_S)

    async def answer(self, request: web.Request, origin: str) -> web.Response:
        """The ping answer for `origin`: remembered, asked, or the outage answer."""
        try:
            ping = await self._ping(origin, forwarded(request))
        except UpstreamUnavailable as e:
            return ping_answer(request, str(e))
        if in_trouble(ping.status):
            return ping_answer(request, str(ping.status))
        return web.Response(status=ping.status, headers=ping.headers, body=ping.body)

    async def challenge(self, origin: str) -> str | None:
        """The challenge upstream's answer to an anonymous ping of `origin` carries (the
        realm and service of its tokens); None if none, or upstream cannot say."""
        try:
            ping = await self._ping(origin, {})
        except UpstreamUnavailable:
            return None
        return None if in_trouble(ping.status) else ping.headers.get("WWW-Authenticate")

    async def _ping(self, origin: str, headers: Mapping[str, str]) -> _Ping:
        """Remembered, or asked (and remembered unless upstream is in trouble)."""
        ping = self._answers.get(origin)
        if ping is None:
            reply = await self._upstream.send("GET", origin + "/v2/", headers)
            try:
                body = await reply.read(self.MAX_BODY_BYTES)
            finally:
                reply.close()
            ping = _Ping(reply.status, CIMultiDict(reply.headers), body)
            if not in_trouble(reply.status):
                self._answers.set(origin, ping)
        return ping
