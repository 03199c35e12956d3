"""Mirror mode (issue #22): a request to one of `mirror_mode.names` becomes the request
an intercepted client would have sent to the registry it means, before anything else
sees it, so the cache, the access gate, statistics and the audit log treat both alike.

The answer goes back as a proxy's: `OCI-Namespace` echoes the `ns` that chose the
registry, and token realms in challenges point at the relay on the mirror's own name
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
from appliance.proxy.site import Site


@dataclass(frozen=True, slots=True)
class Mirrored:
    """A request that came through mirror mode: how to word its answer."""

    authority: str
    """The mirror as the client addressed it (`Host`: name and port)."""
    namespace: str | None
    """The `ns` it sent, echoed as `OCI-Namespace`."""


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
        site = self._site_for(_host(request))
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
            host, path = realm
            if not self._relays(host):
                raise UnknownHost(host)
            if request.method not in _TOKEN_STEPS:
                raise Unsupported(f"the token relay takes GET and POST, not {request.method}")
            if registry_api(path):  # a way around mirror mode's pulls-only rule
                raise Unsupported("the token relay serves token realms, not the registry API")
            scopes = query.popall("scope", [])
            named = next((r for s in scopes if (r := scoped_registry(s)) is not None), None)
            if named is not None and (elsewhere := await self._realm_of(named, host)):
                host, path, query["service"] = elsewhere
            query.extend(("scope", upstream_scope(s)) for s in scopes)
            request[MIRRORED] = Mirrored(request.host, None)
            return request.clone(host=host, rel_url=URL(path).with_query(query))
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
        request[MIRRORED] = Mirrored(request.host, asked.namespace)
        return request.clone(host=origin, rel_url=URL(asked.path).with_query(query))

    async def _realm_of(self, named: str, realm_host: str) -> tuple[str, str, str] | None:
        """(host, path, service) of `named` registry's own token realm, when a token
        request to another registry's realm is for it: podman's and skopeo's mirror
        clients take the challenge of the mirror's ping, which is the default registry's,
        for every registry they name in its path. None: the realm asked is right."""
        origin, asked = self._origin(named), self._site_for(realm_host)
        found = None if origin is None else self._site_for(origin)
        if found is None or asked is None or found.registry == asked.registry:
            return None
        header = None if self._challenge is None else await self._challenge(f"https://{origin}")
        challenge = None if header is None else bearer(header)
        url = None if challenge is None else URL(challenge.params["realm"])
        if challenge is None or url is None or url.scheme != "https" or not url.host:
            return None
        if url.explicit_port is not None and url.explicit_port != 443:
            return None
        if not self._relays(url.host.lower()):
            return None
        return url.host.lower(), url.path or "/", challenge.params.get("service", "")


def _host(request: web.Request) -> str:
    return (request.url.host or "").lower().rstrip(".")
