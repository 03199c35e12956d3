"""The registry-facing aiohttp application: maps HTTP to cache calls and back.

Manifest and blob GET/HEAD go through the cache; everything else — the `/v2/` ping,
tags, catalog, referrers, pushes, token realms, other paths — streams through to the real
upstream unchanged in both directions. Errors are rendered in one place, in the registry
error format.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Protocol

from aiohttp import web
from multidict import CIMultiDict

from appliance.cache.answers import (
    Answer,
    Described,
    Filling,
    Refused,
    Relayed,
    Stored,
    Target,
    UpstreamMismatch,
)
from appliance.cache.fill import FillFailed, FillState, TooManyFills
from appliance.cache.ports import UpstreamReply, UpstreamUnavailable, UpstreamUntrusted
from appliance.cache.reading import CHUNK_BYTES, read_file
from appliance.cache.service import RegistryCache
from appliance.logthrottle import LogThrottle
from appliance.metrics import Metrics, method_label
from appliance.oci.mediatypes import parse_accept
from appliance.oci.routes import Kind, RouteError, check_path, parse_route
from appliance.proxy.loops import Bridge
from appliance.proxy.ranges import RangeError, parse_range

log = logging.getLogger(__name__)
_outage_log = LogThrottle(log, interval_s=300.0)
_refused_log = LogThrottle(log, interval_s=60.0)

API_VERSION = {"Docker-Distribution-API-Version": "registry/2.0"}
STREAM_CHUNK_BYTES = 256 * 1024
WRITE_TIMEOUT_S = 120.0
# Request headers that describe the client's connection to us, not its request upstream.
_NOT_FORWARDED = frozenset({"host", "content-length", "transfer-encoding", "expect"})
# All a manifest or blob request carries upstream: the access gate keys on
# `Authorization` alone, so no other header may vouch for a client (a Cookie would make
# a private answer look anonymous). What the cache fetches is the whole, unencoded body;
# ranges and conditionals are answered from the store.
_FOR_CACHE = frozenset({"authorization", "accept", "user-agent"})


class PassThrough(Protocol):
    async def send(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: AsyncIterator[bytes] | None = None,
    ) -> UpstreamReply: ...


@dataclass(frozen=True, slots=True)
class Site:
    """What the config says about a request's Host: its tag TTL and role."""

    tag_ttl_s: float
    max_stale_s: float
    api: bool
    """False for token-realm hosts, whose traffic always passes through."""
    own_credentials: bool = False
    """regcache has credentials for this registry: clients are told no login is needed."""
    label: str = ""
    """The configured host or `*.` pattern the Host matched: metrics and statistics use it
    (a wildcard admits unboundedly many names)."""


def registry_error(status: int, code: str, message: str) -> web.Response:
    """The one place HTTP errors are rendered, in the registry error format."""
    body = {"errors": [{"code": code, "message": message, "detail": None}]}
    return web.Response(
        status=status, text=json.dumps(body), content_type="application/json", headers=API_VERSION
    )


@dataclass(frozen=True, slots=True)
class _Ping:
    status: int
    headers: CIMultiDict[str]
    body: bytes
    until: float


class PingCache:
    """Upstream's answer to an anonymous `/v2/` ping (200, or 401 naming the token realm)
    is the same for every client: kept for a minute instead of asked per pull."""

    TTL_S = 60.0
    MAX_BODY_BYTES = 64 * 1024

    def __init__(self, upstream: PassThrough) -> None:
        self._upstream = upstream
        self._answers: dict[str, _Ping] = {}

    async def answer(self, request: web.Request, origin: str, site: Site) -> web.StreamResponse:
        now = time.monotonic()
        ping = self._answers.get(origin)
        if ping is None or ping.until <= now:
            try:
                reply = await self._upstream.send("GET", origin + "/v2/", _forwarded(request))
            except UpstreamUnavailable as e:
                fallback = _outage_answer(request, site, str(e))
                assert fallback is not None
                return fallback
            try:
                body = await reply.read(self.MAX_BODY_BYTES)
            finally:
                reply.close()
            if reply.status >= 500 or reply.status == 429:
                fallback = _outage_answer(request, site, str(reply.status))
                assert fallback is not None
                return fallback
            ping = _Ping(reply.status, CIMultiDict(reply.headers), body, now + self.TTL_S)
            if len(self._answers) > 4096:
                self._answers.clear()
            self._answers[origin] = ping
        return web.Response(status=ping.status, headers=ping.headers, body=ping.body)


def create_app(
    cache: RegistryCache,
    upstream: PassThrough,
    site_for: Callable[[str], Site | None],
    metrics: Metrics | None = None,
    audit: Callable[[dict[str, object]], None] | None = None,
    bridge: Bridge | None = None,
) -> web.Application:
    """The proxy application; with a `bridge`, for a loop other than the cache's (every
    call into the cache, upstream and index crosses it)."""
    pings = PingCache(upstream)
    metrics = metrics or Metrics()
    bridge = bridge or Bridge(None)

    @web.middleware
    async def count_requests(
        request: web.Request, handler: Callable[..., object]
    ) -> web.StreamResponse:
        request["started"] = time.monotonic()
        response = await handler(request)  # type: ignore[misc]
        assert isinstance(response, web.StreamResponse)
        site = site_for((request.url.host or "").lower().rstrip("."))
        label = site.label if site else "unknown"
        metrics.requests.labels(label, _route_label(request.path), method_label(request.method),
                                str(response.status)).inc()  # fmt: skip
        return response

    @web.middleware
    async def errors(request: web.Request, handler: Callable[..., object]) -> web.StreamResponse:
        try:
            response = await handler(request)  # type: ignore[misc]
            assert isinstance(response, web.StreamResponse)
            return response
        except RouteError as e:
            _refused_log.warning(
                f"bad-request {request.host}", "request refused host=%.100s code=%s error=%s",
                request.host, e.code, e,
            )  # fmt: skip
            return registry_error(400, e.code, str(e))
        except RangeError as e:
            return registry_error(416, "BLOB_UNKNOWN", str(e))
        except FillFailed as e:
            return registry_error(502, "UNKNOWN", f"upstream transfer failed: {e}")
        except TooManyFills as e:
            response = registry_error(503, "TOOMANYREQUESTS", str(e))
            response.headers["Retry-After"] = "1"
            return response
        except UpstreamMismatch as e:
            log.warning("upstream mismatch host=%s path=%s error=%s", request.host, request.path, e)
            return registry_error(502, "UNKNOWN", f"upstream sent inconsistent content: {e}")
        except UpstreamUnavailable as e:
            _outage_log.warning(
                f"unavailable {request.host}",
                "upstream unavailable host=%.100s path=%.200s error=%s",
                request.host, request.path, e,
            )  # fmt: skip
            # The details stay in the log: the answer must not differ between content
            # regcache holds and content it does not (THREAT_MODEL.md).
            untrusted = isinstance(e, UpstreamUntrusted)
            what = "its TLS certificate was not accepted" if untrusted else "unavailable"
            return registry_error(502, "UNAVAILABLE", f"upstream {request.host:.100} {what}")

    async def handle(request: web.Request) -> web.StreamResponse:
        host = (request.url.host or "").lower().rstrip(".")
        site = site_for(host)
        if site is None:
            return registry_error(421, "DENIED", f"{host!r} is not a registry regcache serves")
        origin = f"https://{host}"
        check_path(request.rel_url.raw_path)  # before anything, pass-through included
        route = parse_route(request.path) if site.api else None
        cacheable = route is not None and route.kind is not Kind.REFERRERS
        anonymous_ping = request.path == "/v2/" and "Authorization" not in request.headers
        if site.api and anonymous_ping and request.method in ("GET", "HEAD"):
            if site.own_credentials:  # no challenge: clients send none, regcache's are used
                return web.json_response({}, headers=API_VERSION)
            return await bridge.run(pings.answer(request, origin, site))
        if not cacheable or request.method not in ("GET", "HEAD"):
            # Referrers change as signatures are added: always asked upstream.
            return await _pass_through(request, upstream, origin, site, bridge)
        assert route is not None
        target = Target(
            origin=origin,
            repository=route.repository,
            headers=CIMultiDict(
                (k, v) for k, v in request.headers.items() if k.lower() in _FOR_CACHE
            ),
            accept=parse_accept(request.headers.getall("Accept", [])),
            tag_ttl_s=site.tag_ttl_s,
            max_stale_s=site.max_stale_s,
        )
        head = request.method == "HEAD"
        kind = "blob" if route.kind is Kind.BLOB else "manifest"
        started, body_bytes = time.monotonic(), 0

        def count(sent: int, from_store: bool) -> None:
            nonlocal body_bytes
            body_bytes += sent
            bridge.call(cache.count_served, site.label, sent if from_store else 0,
                        0 if from_store else sent)  # fmt: skip
            bridge.call(partial(metrics.body_sent, site.label, route.repository, sent,
                                from_store=from_store))  # fmt: skip

        manifest = route.kind is not Kind.BLOB
        for _ in range(2):
            # A hit known in memory is answered on this loop; anything else is decided on
            # the cache's (upstream, index, fills).
            hit = cache.stored_now(target, route.reference, manifest=manifest)
            answer: Answer
            if hit is not None:
                answer = hit
                bridge.call(partial(cache.note_hit, target, hit, manifest=manifest))
            elif not manifest:
                assert not isinstance(route.reference, str)
                answer = await bridge.run(cache.blob(target, route.reference, head=head))
            else:
                answer = await bridge.run(cache.manifest(target, route.reference, head=head))
            request["outcome"] = _outcome(answer)
            metrics.answers.labels(site.label, kind, request["outcome"]).inc()
            try:
                response = await _render(request, answer, count, bridge, manifest=manifest)
            except FileNotFoundError:
                continue  # evicted between lookup and open: ask again, it is a miss now
            if audit is not None:
                audit({
                    "time": _utc_now(), "client": request.remote, "registry": host,
                    "repository": route.repository, "reference": str(route.reference),
                    "digest": None if isinstance(answer, Relayed | Refused) else str(answer.digest),
                    "kind": kind, "method": request.method, "status": response.status,
                    "bytes": body_bytes, "outcome": request["outcome"],
                    "ms": round((time.monotonic() - started) * 1000, 1),
                })  # fmt: skip
            return response
        return registry_error(503, "UNAVAILABLE", "content was evicted while being served")

    async def first_byte(request: web.Request, _response: web.StreamResponse) -> None:
        """The status line is about to go out: time to first byte of a cache answer."""
        if "outcome" in request:
            waited = time.monotonic() - request["started"]
            metrics.first_byte_seconds.labels(request["outcome"]).observe(waited)

    # Bodies are streamed (pushes pass through), never read whole: the default
    # client_max_size (1 MiB) only bounds what a handler would read into memory.
    app = web.Application(middlewares=[count_requests, errors])
    app.on_response_prepare.append(first_byte)
    app.router.add_route("*", r"/{tail:[\s\S]*}", handle)  # newlines too: refused in `handle`
    return app


def _utc_now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


def _route_label(path: str) -> str:
    if path in ("/v2/", "/v2"):
        return "ping"
    try:
        route = parse_route(path)
    except RouteError:
        return "other"
    return "other" if route is None else route.kind.name.lower()


def _outcome(answer: Answer) -> str:
    if isinstance(answer, Stored):
        return "stale" if answer.stale else "hit"
    return "relayed" if isinstance(answer, Relayed | Refused) else "miss"


def _forwarded(request: web.Request) -> CIMultiDict[str]:
    """The client's headers for upstream; repeated ones (Accept!) stay repeated."""
    return CIMultiDict(
        (k, v) for k, v in request.headers.items() if k.lower() not in _NOT_FORWARDED
    )


_REFUSALS = {
    401: ("UNAUTHORIZED", "authentication required"),
    403: ("DENIED", "requested access to the resource is denied"),
    429: ("TOOMANYREQUESTS", "upstream rate limit reached"),
}


def _refusal(refused: Refused, *, manifest: bool) -> web.Response:
    """Upstream's no, the same whether or not the content is in the store."""
    if refused.status == 404:
        code, message = (
            ("MANIFEST_UNKNOWN", "manifest unknown")
            if manifest
            else ("BLOB_UNKNOWN", "blob unknown to registry")
        )
    elif refused.status >= 500:
        code, message = "UNAVAILABLE", f"upstream answered {refused.status}"
    else:
        code, message = _REFUSALS.get(
            refused.status, ("UNKNOWN", f"upstream answered {refused.status}")
        )
    response = registry_error(refused.status, code, message)
    response.headers.update(refused.headers)
    return response


def _content_headers(digest: object, media_type: str, size: int | None) -> dict[str, str]:
    headers = {
        **API_VERSION,
        "Docker-Content-Digest": str(digest),
        "Content-Type": media_type,
        "Accept-Ranges": "bytes",
    }
    if size is not None:
        headers["Content-Length"] = str(size)
    return headers


async def _render(
    request: web.Request,
    answer: Answer,
    count: Callable[[int, bool], None],
    bridge: Bridge,
    *,
    manifest: bool,
) -> web.StreamResponse:
    """Send `answer`; `count(body bytes, from the store?)` once the body is sent."""
    if isinstance(answer, Refused):
        return _refusal(answer, manifest=manifest)
    if isinstance(answer, Stored):
        fd = os.open(answer.path, os.O_RDONLY | os.O_CLOEXEC)  # before any byte is sent
        try:
            return await _stream_stored(request, answer, fd, lambda n: count(n, True))
        finally:
            os.close(fd)
    if isinstance(answer, Described):
        response = web.StreamResponse(
            headers=_content_headers(answer.digest, answer.media_type, answer.size)
        )
        await response.prepare(request)
        await response.write_eof()
        return response
    if isinstance(answer, Filling):
        return await _stream_fill(request, answer, lambda n: count(n, False), bridge)
    return await _relay(request, answer.reply, bridge)


async def _start(
    request: web.Request,
    digest: object,
    media_type: str,
    size: int | None,
    *,
    stale: bool = False,
) -> tuple[web.StreamResponse, int, int | None]:
    """Send the status line and headers; (response, start, stop) of the body to send."""
    start, stop, partial = 0, size, False
    if "Range" in request.headers:
        if size is None:
            raise RangeError("range requests on a blob of unknown length")
        start, stop = parse_range(request.headers["Range"], size)
        partial = True
    length = None if stop is None else stop - start
    response = web.StreamResponse(
        status=206 if partial else 200, headers=_content_headers(digest, media_type, length)
    )
    if stale:  # RFC 9111 5.5 is gone, but the Warning header is what tools still show
        response.headers["Warning"] = '110 regcache "Response is Stale: upstream unavailable"'
    if partial:
        response.headers["Content-Range"] = f"bytes {start}-{stop - 1}/{size}"  # type: ignore[operator]
    await response.prepare(request)
    return response, start, stop


async def _send_body(
    request: web.Request,
    response: web.StreamResponse,
    chunks: AsyncIterator[bytes | bytearray] | None,
    what: object,
    sent: Callable[[int], None] = lambda _n: None,
) -> web.StreamResponse:
    """Write the body (None for HEAD) and finish the response, or cut the connection."""
    total = 0
    try:
        if chunks is not None:
            loop = asyncio.get_running_loop()
            # A client that stops reading must not hold its handler (and file) forever:
            # no progress for WRITE_TIMEOUT_S cuts it. The deadline moves at most once a
            # second, not per chunk (a timer per chunk is a cost on the hottest path).
            async with asyncio.timeout(WRITE_TIMEOUT_S) as deadline:
                moved = loop.time()
                async for chunk in chunks:
                    await response.write(chunk)
                    total += len(chunk)
                    if (now := loop.time()) - moved > 1.0:
                        deadline.reschedule(now + WRITE_TIMEOUT_S)
                        moved = now
    except ConnectionError:
        return response  # the client went away; a fill it started carries on
    except Exception as e:  # noqa: BLE001 - whatever broke, the response cannot be completed
        # The status line is gone: cutting the connection is how the client learns of it.
        log.warning("response cut short what=%s error=%s", what, e)
        if request.transport is not None:
            request.transport.abort()
        return response
    finally:
        sent(total)
    await response.write_eof()
    return response


async def _stream_stored(
    request: web.Request, answer: Stored, fd: int, sent: Callable[[int], None]
) -> web.StreamResponse:
    response, start, stop = await _start(
        request, answer.digest, answer.media_type, answer.size, stale=answer.stale
    )
    assert stop is not None
    body = None if request.method == "HEAD" else read_file(fd, start, stop)
    return await _send_body(request, response, body, answer.digest, sent)


async def _stream_fill(
    request: web.Request, answer: Filling, sent: Callable[[int], None], bridge: Bridge
) -> web.StreamResponse:
    fill = answer.fill
    if fill.state is FillState.FAILED:  # joined too late: nothing sent yet, say so properly
        raise FillFailed(str(fill.error))
    response, start, stop = await _start(request, answer.digest, answer.media_type, fill.size)
    # Across loops every piece costs a round trip between threads: take bigger ones.
    take = CHUNK_BYTES * (2 if bridge.crosses else 1)
    body = bridge.iterate(fill.stream(start, stop if stop is not None else 1 << 62, take))
    return await _send_body(request, response, body, answer.digest, sent)


async def _relay(request: web.Request, reply: UpstreamReply, bridge: Bridge) -> web.StreamResponse:
    try:
        response = web.StreamResponse(status=reply.status, headers=CIMultiDict(reply.headers))
        await response.prepare(request)
        body = None if request.method == "HEAD" else bridge.iterate(reply.chunks())
        return await _send_body(request, response, body, request.path)
    finally:
        bridge.call(reply.close)


async def _pass_through(
    request: web.Request, upstream: PassThrough, origin: str, site: Site, bridge: Bridge
) -> web.StreamResponse:
    body = None
    if request.can_read_body:
        body = bridge.export(request.content.iter_chunked(STREAM_CHUNK_BYTES))
    headers = _forwarded(request)
    if request.content_length is not None:
        headers["Content-Length"] = str(request.content_length)
    try:
        url = origin + request.path_qs
        reply = await bridge.run(upstream.send(request.method, url, headers, body))
    except UpstreamUnavailable as e:
        fallback = _outage_answer(request, site, str(e))
        if fallback is None:
            raise
        return fallback
    trouble = reply.status >= 500 or reply.status == 429
    if trouble and (fallback := _outage_answer(request, site, f"{reply.status}")):
        bridge.call(reply.close)
        return fallback
    return await _relay(request, reply, bridge)


def _outage_answer(request: web.Request, site: Site, why: str) -> web.Response | None:
    """Upstream is down: answer the steps before a pull so clients get to what is cached.

    The `/v2/` ping gets 200 (no challenge, so clients go straight to the pull) and a
    token realm gets a token that proves nothing: the access gate still serves only
    repositories it knows to be public, or credentials verified before the outage
    (THREAT_MODEL.md, upstream outages).
    """
    if request.method not in ("GET", "HEAD"):
        return None
    if site.api and request.path == "/v2/":
        _outage_log.warning(
            f"ping {request.host}", "upstream down: answering the ping host=%s reason=%s",
            request.host, why,
        )  # fmt: skip
        return web.json_response({}, headers=API_VERSION)
    if not site.api:
        _outage_log.warning(
            f"token {request.host}", "upstream down: answering the token step host=%s reason=%s",
            request.host, why,
        )  # fmt: skip
        token = "regcache-outage-token"  # noqa: S105 - not a credential: it opens nothing
        return web.json_response({"token": token, "access_token": token, "expires_in": 60})
    return None


async def start_runner(app: web.Application) -> web.AppRunner:
    """Set up `app`; the TLS listener feeds connections to `runner.server`."""
    runner = web.AppRunner(
        app,
        access_log=None,
        handle_signals=False,
        keepalive_timeout=30,
        max_line_size=8190,
        max_field_size=16384,  # room for long bearer tokens, nothing more
    )
    await runner.setup()
    return runner
