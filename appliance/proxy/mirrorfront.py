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

from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web
from aiohttp.typedefs import Handler
from multidict import MultiDict
from yarl import URL

from appliance.oci.proxying import (
    proxied,
    realm_target,
    registry_api,
    relayed_challenge,
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


class MirrorFront:
    """The middleware that turns mirror requests into intercepted ones, and the
    response hook that words their answers as a proxy's."""

    def __init__(
        self,
        site_for: Callable[[str], Site | None],
        origin: Callable[[str], str | None],
        default_registry: str,
    ) -> None:
        self._site_for = site_for
        self._origin = origin
        self._default = default_registry

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        site = self._site_for(_host(request))
        if site is None or not site.mirror:
            return await handler(request)
        try:
            upstreamed = self._upstreamed(request)
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

    def _upstreamed(self, request: web.Request) -> web.Request:
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
            scopes = [upstream_scope(s) for s in query.popall("scope", [])]
            query.extend(("scope", s) for s in scopes)
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


def _host(request: web.Request) -> str:
    return (request.url.host or "").lower().rstrip(".")
