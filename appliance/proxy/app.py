"""The registry-facing aiohttp application: maps HTTP requests to cache calls and back.

Manifest, blob and referrers GET/HEAD go through the cache; everything else — the ping,
tags, catalog, pushes, token realms, other paths — streams through to the real
upstream unchanged in both directions, and so do manifests and blobs while the cache is
not `caching` yet (start-up reconciles the store). Errors are rendered in errors.py.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from functools import partial
from typing import Any, Protocol

from aiohttp import web
from aiohttp.typedefs import Handler
from multidict import CIMultiDict

from appliance.admin.metrics import Metrics, method_label
from appliance.cache.answers import Answer, Stored, Target
from appliance.cache.ports import RELAYED, UpstreamUnavailable, in_trouble
from appliance.cache.uploads import Uploads
from appliance.config.push import DENY, push_policy
from appliance.local.auth import LocalAccess
from appliance.local.registry import LocalRegistry
from appliance.oci.digest import Digest
from appliance.oci.mediatypes import parse_accept
from appliance.oci.names import same_repository
from appliance.oci.routes import check_path, written_repository
from appliance.proxy.accounting import Tally, audit_entry, outcome
from appliance.proxy.errors import API_VERSION, Evicted, PushDenied, UnknownHost, render_errors
from appliance.proxy.localsite import LocalSite
from appliance.proxy.loops import Bridge
from appliance.proxy.mirrorfront import MirrorFront
from appliance.proxy.outage import OUTAGE_AUTHORIZATION, PingCache, TokensGiven, outage_answer
from appliance.proxy.passthrough import PassThrough, forward
from appliance.proxy.pushes import Keeping, Pushes, push_step
from appliance.proxy.responses import relay, render
from appliance.proxy.routing import (
    BlobRoute,
    CacheRoute,
    ManifestRoute,
    ReferrersRoute,
    cache_route,
    route_label,
)
from appliance.proxy.site import Site, request_host

__all__ = ["RegistryProxy", "Site", "create_app", "start_runner"]

STARTED = web.RequestKey("started", float)
OUTCOME = web.RequestKey("outcome", str)
"""How the cache answered (hit, stale, miss, relayed): set for manifest and blob requests."""
# All a manifest or blob request carries upstream: the access gate keys on
# `Authorization` alone, so no other header may vouch for a client (a Cookie would make
# a private answer look anonymous). What the cache fetches is the whole, unencoded body;
# ranges and conditionals are answered from the store.
_FOR_CACHE = frozenset({"authorization", "accept", "user-agent"})

Audit = Callable[[dict[str, object]], None]
# What can make a 404 or a tag wrong: a PATCH only adds to an upload that its PUT ends
# (and each of an upload's many chunks would void every 404 remembered meanwhile).
_WRITES = frozenset({"PUT", "POST", "DELETE"})
_PUSHES = _WRITES | {"PATCH"}
SHUTDOWN_GRACE_S = 5.0
"""At shutdown, how long requests in flight get to finish before they are cut: a long
download must not hold a stop past systemd's TimeoutStopSec (then SIGKILL)."""


class Cache(Protocol):
    """What the proxy asks of the cache (`RegistryCache`)."""

    def stored_now(
        self, target: Target, reference: str | Digest, *, manifest: bool
    ) -> Stored | None: ...
    def note_hit(self, target: Target, stored: Stored, *, manifest: bool) -> None: ...
    async def blob(self, target: Target, digest: Digest, *, head: bool) -> Answer: ...
    async def manifest(self, target: Target, reference: str | Digest, *, head: bool) -> Answer: ...
    async def referrers(self, target: Target, subject: Digest, query: str) -> Answer: ...
    def count_served(self, host: str, from_store: int, from_upstream: int) -> None: ...
    async def written(self, places: Sequence[tuple[str, str]]) -> None: ...
    @property
    def uploads(self) -> Uploads | None:
        """Where pushes are kept on their way (None: they only pass through)."""
        ...


def create_app(
    cache: Cache,
    upstream: PassThrough,
    site_for: Callable[[str], Site | None],
    metrics: Metrics | None = None,
    audit: Audit | None = None,
    bridge: Bridge | None = None,
    *,
    caching: Callable[[], bool] = lambda: True,
    tokens: TokensGiven | None = None,
    local: tuple[LocalRegistry, LocalAccess] | None = None,
    peers: frozenset[str] = frozenset(),
    mirror: MirrorFront | None = None,
) -> web.Application:
    """The proxy application; with a `bridge`, for a loop other than the cache's (every
    call into the cache, upstream and index crosses it). While `caching()` says no,
    manifests and blobs pass through uncached too (asked from any loop's thread).
    `tokens` is shared by every loop's application; `local` answers the local
    registry's hosts; requests from `peers` are the site's other gateways'; `mirror`
    turns mirror-mode requests into intercepted ones."""
    proxy = RegistryProxy(
        cache, upstream, site_for, metrics, audit, bridge, caching=caching, tokens=tokens,
        local=local, peers=peers, mirror=mirror,
    )  # fmt: skip
    return proxy.application()


class RegistryProxy:
    """The handlers of one proxy application (one per event loop)."""

    def __init__(
        self,
        cache: Cache,
        upstream: PassThrough,
        site_for: Callable[[str], Site | None],
        metrics: Metrics | None = None,
        audit: Audit | None = None,
        bridge: Bridge | None = None,
        *,
        caching: Callable[[], bool] = lambda: True,
        tokens: TokensGiven | None = None,
        local: tuple[LocalRegistry, LocalAccess] | None = None,
        peers: frozenset[str] = frozenset(),
        mirror: MirrorFront | None = None,
    ) -> None:
        self._cache = cache
        self._peers = peers
        self._tokens = tokens or TokensGiven()
        self._caching = caching
        self._upstream = upstream
        self._site_for = site_for
        self._metrics = metrics or Metrics()
        self._audit = audit
        self._bridge = bridge or Bridge(None)
        self._pings = PingCache(upstream)
        self._mirror = None if mirror is None else mirror.asking(self._challenge)
        uploads = cache.uploads
        self._pushes = None if uploads is None else Pushes(uploads, self._bridge)
        self._local = None if local is None else LocalSite(*local, self._bridge, caching, audit)

    def application(self) -> web.Application:
        # Bodies are streamed (pushes pass through), never read whole: the default
        # client_max_size (1 MiB) only bounds what a handler would read into memory.
        app = web.Application(middlewares=[self._count_requests, render_errors])
        if self._mirror is not None:  # first: all after it see an intercepted request
            app.middlewares.insert(0, self._mirror.middleware)
            app.on_response_prepare.append(self._mirror.on_prepare)
        app.on_response_prepare.append(self._first_byte)
        # Newlines too: `check_path` refuses them.
        app.router.add_route("*", r"/{tail:[\s\S]*}", self.handle)
        return app

    @web.middleware
    async def _count_requests(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        request[STARTED] = time.monotonic()
        response = await handler(request)
        site = self._site_for(request_host(request))
        label = site.label if site else "unknown"
        route, method = route_label(request.path), method_label(request.method)
        self._metrics.requests.labels(label, route, method, str(response.status)).inc()
        return response

    async def _first_byte(self, request: web.Request, _response: web.StreamResponse) -> None:
        """The status line is about to go out: time to first byte of a cache answer."""
        if OUTCOME in request:
            waited = time.monotonic() - request[STARTED]
            self._metrics.first_byte_seconds.labels(request[OUTCOME]).observe(waited)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        host = request_host(request)
        site = self._site_for(host)
        if site is None:
            raise UnknownHost(host)
        origin = f"https://{host}"
        check_path(request.rel_url.raw_path)  # before anything, pass-through included
        if site.local:  # nothing under its names ever goes upstream
            if self._local is None:
                raise UnknownHost(host)
            return await self._local.handle(request)
        route = cache_route(request.path, request.rel_url.raw_query_string) if site.api else None
        anonymous_ping = request.path == "/v2/" and "Authorization" not in request.headers
        if site.api and anonymous_ping and request.method in ("GET", "HEAD"):
            return await self._ping(request, origin, site)
        if site.api and request.method in _PUSHES:
            _check_push(request.path, host, site)
        if route is None or request.method not in ("GET", "HEAD") or not self._caching():
            return await self._pass_through(request, origin, site)
        return await self._serve(request, origin, site, route)

    async def _ping(self, request: web.Request, origin: str, site: Site) -> web.StreamResponse:
        if site.own_credentials:  # no challenge: clients send none, regcache's are used
            return web.json_response({}, headers=API_VERSION)
        return await self._bridge.run(self._pings.answer(request, origin))

    async def _challenge(self, origin: str) -> str | None:
        return await self._bridge.run(self._pings.challenge(origin))

    async def _pass_through(
        self, request: web.Request, origin: str, site: Site
    ) -> web.StreamResponse:
        step = push_step(request.method, request.path, request.query, request.headers)
        if step is None or self._pushes is None or not site.api or not self._caching():
            return await self._relay(request, origin, site)
        keeping = await self._pushes.begin(step, origin.removeprefix("https://"))
        try:
            return await self._relay(request, origin, site, keeping)
        finally:
            if not keeping.done:  # no answer from upstream: nothing is kept
                await self._pushes.answered(keeping, 0, {}, None)

    async def _relay(
        self,
        request: web.Request,
        origin: str,
        site: Site,
        keeping: Keeping | None = None,
    ) -> web.StreamResponse:
        wrap = None if keeping is None else keeping.wrap()
        try:
            reply = await forward(request, self._upstream, origin, self._bridge, wrap)
        except UpstreamUnavailable as e:
            fallback = outage_answer(request, site, str(e), self._tokens)
            if fallback is None:
                raise
            return fallback
        if in_trouble(reply.status) and (
            fallback := outage_answer(request, site, f"{reply.status}", self._tokens)
        ):
            self._bridge.call(reply.close)
            return fallback
        if keeping is not None and self._pushes is not None:  # kept before the client hears
            authorization = request.headers.get("Authorization")
            try:
                await self._pushes.answered(keeping, reply.status, reply.headers, authorization)
            except BaseException:
                self._bridge.call(reply.close)
                raise
        if site.api and request.method in _WRITES and 200 <= reply.status < 300:
            await self._written(request.path, origin.removeprefix("https://"), site)
        return await relay(request, reply, self._bridge)

    async def _written(self, path: str, host: str, site: Site) -> None:
        """A write to `path` through `host` succeeded: the cache forgets what it
        remembered missing in that repository, by every name it goes by, before the
        client hears of it."""
        repository = written_repository(path)
        if repository is None:
            return
        hosts = (host, *(alias for alias in site.aliases if alias != host))
        places = [(h, name) for h in hosts for name in same_repository(h, repository)]
        await self._bridge.run(self._cache.written(places))

    async def _serve(
        self, request: web.Request, origin: str, site: Site, route: CacheRoute
    ) -> web.StreamResponse:
        """A manifest or blob GET/HEAD, answered by the cache."""
        target = _target(request, origin, site, route, self._tokens)
        if request.remote in self._peers or RELAYED in request.headers:
            target = replace(target, from_peer=True)
        tally = Tally(self._cache, self._metrics, self._bridge, site.label,
                      route.repository)  # fmt: skip
        started = time.monotonic()
        for _ in range(2):
            answer = await self._answer(target, route, head=request.method == "HEAD")
            request[OUTCOME] = outcome(answer)
            self._metrics.answers.labels(site.label, route.kind, request[OUTCOME]).inc()
            manifest = not isinstance(route, BlobRoute)  # a 404 says MANIFEST_UNKNOWN
            try:
                response = await render(
                    request, answer, tally.count, self._bridge, manifest=manifest
                )
            except FileNotFoundError:
                continue  # evicted between lookup and open: ask again, it is a miss now
            if self._audit is not None:
                ms = round((time.monotonic() - started) * 1000, 1)
                self._audit(audit_entry(request, target, route, answer, response, tally.sent, ms))
            return response
        raise Evicted("content was evicted while being served")

    async def _answer(self, target: Target, route: CacheRoute, *, head: bool) -> Answer:
        # A hit known in memory is answered on this loop; anything else is decided on the
        # cache's (upstream, index, fills). Referrers never: the subject is not the answer.
        if isinstance(route, ReferrersRoute):
            asked = self._cache.referrers(target, route.reference, route.query)
            return await self._bridge.run(asked)
        manifest = isinstance(route, ManifestRoute)
        hit = self._cache.stored_now(target, route.reference, manifest=manifest)
        if hit is not None:
            self._bridge.call(partial(self._cache.note_hit, target, hit, manifest=manifest))
            return hit
        match route:
            case BlobRoute():
                return await self._bridge.run(self._cache.blob(target, route.reference, head=head))
            case ManifestRoute():
                asked = self._cache.manifest(target, route.reference, head=head)
                return await self._bridge.run(asked)


def _target(
    request: web.Request, origin: str, site: Site, route: CacheRoute, tokens: TokensGiven
) -> Target:
    """The request as the cache sees it."""
    return Target(
        origin=origin,
        repository=route.repository,
        headers=CIMultiDict(
            (k, v)
            for k, v in request.headers.items()
            if k.lower() in _FOR_CACHE and v != OUTAGE_AUTHORIZATION
        ),
        accept=parse_accept(request.headers.getall("Accept", [])),
        tag_ttl_s=site.tag_ttl_s,
        max_stale_s=site.max_stale_s,
        realm_down=tokens.realm_down(site, request.headers.get("Authorization")),
    )


def _check_push(path: str, host: str, site: Site) -> None:
    """PushDenied for a write to a repository the registry's push policy denies, and, on a
    registry with any deny rule, for a write whose repository cannot be told (fail closed:
    `/v2//team/app/…` or a vendor API may reach the very repository by another path)."""
    if not any(rule.policy == DENY for rule in site.push):
        return
    repository = written_repository(path)
    if repository is None:
        raise PushDenied(host, f"(no repository in {path[:100]!r})")
    if push_policy(site.push, same_repository(host, repository)) == DENY:
        raise PushDenied(host, repository)


def app_runner(app: web.Application, **options: Any) -> web.AppRunner:
    """A runner whose cleanup cancels what still runs `SHUTDOWN_GRACE_S` into it. aiohttp
    waits `shutdown_timeout` for a handler, then cuts its request's body and waits as long
    again before it cancels the handler: a download, which reads no body, takes both."""
    return web.AppRunner(app, access_log=None, handle_signals=False,
                         shutdown_timeout=SHUTDOWN_GRACE_S / 2, **options)  # fmt: skip


async def start_runner(app: web.Application) -> web.AppRunner:
    """Set up `app`; the TLS listener feeds connections to `runner.server`."""
    runner = app_runner(
        app,
        keepalive_timeout=30,
        max_line_size=8190,
        max_field_size=16384,  # room for long bearer tokens, nothing more
    )
    await runner.setup()
    return runner
