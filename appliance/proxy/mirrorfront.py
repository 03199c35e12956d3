"""Mirror mode (issue #22): a request to one of `mirror_mode.names` becomes the request
an intercepted client would have sent to the registry it means, before anything else
sees it, so the cache, the access gate, statistics and the audit log treat both alike.

The answer goes back as a proxy's: `OCI-Namespace` names the registry an `ns` chose,
and token realms in challenges point at the relay on the mirror's own name
(`/_realm/<host>/<path>`): the client reaches every realm through regcache, and sends
its credentials only to the mirror, as the spec asks. Only pulls: a push goes to the
registry's own name (DNS interception), where its upload locations make sense.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web
from aiohttp.typedefs import Handler
from multidict import MultiDict
from yarl import URL

from appliance.oci.challenge import bearer
from appliance.oci.proxying import (
    proxied,
    realm_target,
    registry_api,
    relayed_challenge,
    scoped_registry,
    upstream_scope,
)
from appliance.oci.routes import RouteError, check_path
from appliance.proxy.errors import UnknownHost, Unsupported, error_response
from appliance.proxy.site import Site, request_host


@dataclass(frozen=True, slots=True)
class Mirrored:
    """A request that came through mirror mode: how to word its answer."""

    authority: str
    """The mirror as the client addressed it (`Host`: name and port)."""
    namespace: str | None
    """The registry its `ns` named, as routed: sent back as `OCI-Namespace`."""


MIRRORED = web.RequestKey("mirrored", Mirrored)
_PULLS = frozenset({"GET", "HEAD"})
_TOKEN_STEPS = frozenset({"GET", "POST"})  # containerd POSTs for OAuth2, then falls back to GET


Challenge = Callable[[str], Awaitable[str | None]]
"""The challenge an anonymous ping of an origin gets (`PingCache.challenge`)."""


class MirrorFront:
    """The middleware that turns mirror requests into intercepted ones, and the
    response hook that words their answers as a proxy's."""

    def __init__(
        self,
        site_for: Callable[[str], Site | None],
        origin: Callable[[str], str | None],
        default_registry: str,
        challenge: Challenge | None = None,
    ) -> None:
        self._site_for = site_for
        self._origin = origin
        self._default = default_registry
        self._challenge = challenge

    def asking(self, challenge: Challenge) -> MirrorFront:
        """This front, finding other registries' realms with `challenge`."""
        return MirrorFront(self._site_for, self._origin, self._default, challenge)

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        site = self._site_for(request_host(request))
        if site is None or not site.mirror:
            return await handler(request)
        try:
            upstreamed = await self._upstreamed(request)
        except (UnknownHost, Unsupported, RouteError) as e:
            return error_response(e, request)
        return await handler(upstreamed)

    async def on_prepare(self, request: web.Request, response: web.StreamResponse) -> None:
        mirrored = request.get(MIRRORED)
        if mirrored is None:
            return
        if mirrored.namespace is not None:
            response.headers["OCI-Namespace"] = mirrored.namespace
        challenges = response.headers.getall("WWW-Authenticate", [])
        if challenges:
            del response.headers["WWW-Authenticate"]
            for challenge in challenges:
                rewritten = relayed_challenge(challenge, mirrored.authority, self._relays)
                response.headers.add("WWW-Authenticate", rewritten)

    def _serves(self, registry: str) -> bool:
        """Whether `registry` (as image names spell it) is a configured one."""
        return self._origin(registry) is not None

    def _relays(self, host: str) -> bool:
        """Whether the relay may take token requests for `host`: a configured registry's
        API or realm host (never the local registry's or the mirror's own)."""
        site = self._site_for(host)
        return site is not None and not site.local and not site.mirror

    async def _upstreamed(self, request: web.Request) -> web.Request:
        check_path(request.rel_url.raw_path)
        query = MultiDict(request.rel_url.query)
        realm = realm_target(request.rel_url.raw_path)
        if realm is not None:
            return await self._token_step(request, *realm, query)
        namespaces = query.popall("ns", [])
        asked = proxied(request.rel_url.raw_path, namespaces[0] if namespaces else None,
                        self._default)  # fmt: skip
        origin = self._origin(asked.registry)
        if origin is None:
            raise UnknownHost(asked.registry)
        if request.method not in _PULLS:
            raise Unsupported(
                f"mirror mode serves pulls only: push to {origin} by its own name"
                " (DNS interception), not through the mirror"
            )
        # Echoed as the registry it named (configured, so a plain host name).
        echo = None if asked.namespace is None else asked.registry
        request[MIRRORED] = Mirrored(request.host, echo)
        return request.clone(host=origin, rel_url=_relative(asked.path, query))

    async def _token_step(
        self, request: web.Request, host: str, path: str, query: MultiDict[str]
    ) -> web.Request:
        """A token request to the relay, as it goes to the realm: that of the registry
        its scope names, if that is another registry than the realm's."""
        if not self._relays(host):
            raise UnknownHost(host)
        if request.method not in _TOKEN_STEPS:
            raise Unsupported(f"the token relay takes GET and POST, not {request.method}")
        # Realms need no escapes or empty segments; refused, no decoding can turn a path
        # into the registry API's (a way around mirror mode's pulls-only rule).
        if "%" in path or "//" in path or registry_api(path):
            raise Unsupported("the token relay serves token realms, not the registry API")
        scopes = query.popall("scope", [])
        named = next((r for s in scopes if (r := scoped_registry(s)) is not None), None)
        # A first segment naming no configured registry is a repository's (gcr.io's
        # domain-scoped projects): the request goes as asked.
        if named is not None and self._serves(named):
            elsewhere = await self._realm_of(named, host)
            if elsewhere is not None:
                host, path, query["service"] = elsewhere
        query.extend(("scope", upstream_scope(s, self._serves)) for s in scopes)
        request[MIRRORED] = Mirrored(request.host, None)
        return request.clone(host=host, rel_url=_relative(path, query))

    async def _realm_of(self, named: str, realm_host: str) -> tuple[str, str, str] | None:
        """(host, path, service) of the `named` registry's own token realm, when a token
        request to another registry's realm is for it: podman's and skopeo's mirror
        clients take the challenge of the mirror's ping, which is the default registry's,
        for every registry they name in its path. None: the realm asked is that
        registry's. UnknownHost when its realm cannot be told: the client's credentials
        must not go to another registry's realm."""
        origin = self._origin(named)
        found = None if origin is None else self._site_for(origin)
        asked = self._site_for(realm_host)
        if found is None or asked is None or found.registry == asked.registry:
            return None
        header = None if self._challenge is None else await self._challenge(f"https://{origin}")
        challenge = None if header is None else bearer(header)
        try:
            url = None if challenge is None else URL(challenge.params["realm"])
        except ValueError:
            url = None
        if (
            challenge is None or url is None or url.scheme != "https" or not url.host
            or url.explicit_port not in (None, 443) or not self._relays(url.host.lower())
        ):  # fmt: skip
            raise UnknownHost(f"{named} (its token realm cannot be told)")
        return url.host.lower(), url.path or "/", challenge.params.get("service", "")


def _relative(path: str, query: MultiDict[str]) -> URL:
    """A path and query as the request to upstream carries them: the path as sent
    (never decoded again, never read as a host)."""
    return URL.build(path=path, encoded=True).with_query(query)
