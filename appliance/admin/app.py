"""The admin listener: the status page (`/`), `/ca.crt`, `/metrics`, `/healthz`,
`/readyz`. Never intercepted; loopback by default; an optional bearer token and a client
allow-list guard every path."""

from __future__ import annotations

import hmac
import ipaddress
import json
from collections.abc import Awaitable, Callable, Sequence

from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client import CONTENT_TYPE_LATEST

from appliance.admin import status, statuspage
from appliance.admin.metrics import Metrics
from appliance.config.model import Endpoint, IPNetwork, StartupError


def create_admin_app(
    metrics: Metrics,
    ready: Callable[[], Awaitable[Sequence[str]]],
    allow: Sequence[IPNetwork],
    token: str | None,
    ca_pem: Callable[[], bytes] = lambda: b"",
    ca_fingerprint: Callable[[], str] = lambda: "",
    sections: Callable[[], str] = lambda: "",
    degraded: Callable[[], Awaitable[Sequence[str]]] | None = None,
) -> web.Application:
    """`ready()` returns the problems keeping regcache from serving (none: ready);
    `degraded()` what works less well though it serves; `sections()` the status page's
    sections beyond the cache's own (the managed mirror's, the shared tier's)."""

    async def scrape(_request: web.Request) -> web.Response:
        response = web.Response(body=metrics.render())
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    async def healthz(_request: web.Request) -> web.Response:
        return web.json_response({"status": "alive"})

    async def readyz(_request: web.Request) -> web.Response:
        problems = list(await ready())
        lesser = list(await degraded()) if degraded is not None else []
        body = json.dumps({"ready": not problems, "problems": problems, "degraded": lesser})
        return web.Response(
            text=body, status=503 if problems else 200, content_type="application/json"
        )

    async def page(_request: web.Request) -> web.Response:
        problems = list(await ready())
        summary = status.parse(metrics.render().decode(), not problems, problems)
        text = statuspage.render(summary, metrics.savings, ca_fingerprint(), sections())
        return web.Response(text=text, content_type="text/html")

    async def ca(_request: web.Request) -> web.Response:
        return web.Response(
            body=ca_pem(),
            content_type="application/x-pem-file",
            headers={"Content-Disposition": 'attachment; filename="regcache-ca.crt"'},
        )

    app = web.Application(middlewares=[_guard(allow, token)])
    app.router.add_get("/", page)
    app.router.add_get("/ca.crt", ca)
    app.router.add_get("/metrics", scrape)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app


def _guard(allow: Sequence[IPNetwork], token: str | None) -> Middleware:
    """Every path: the client must be in `allow`, and bring `token` if one is set."""

    @web.middleware
    async def guard(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        peer = request.remote or ""
        try:
            address = ipaddress.ip_address(peer.split("%", 1)[0])
        except ValueError:
            address = None
        if address is None or not any(address in network for network in allow):
            return web.json_response({"error": f"client {peer} is not allowed"}, status=403)
        if token is not None:
            offered = request.headers.get("Authorization", "").removeprefix("Bearer ")
            if not hmac.compare_digest(offered.encode(), token.encode()):
                return web.json_response(
                    {"error": "bearer token required"},
                    status=401,
                    headers={"WWW-Authenticate": 'Bearer realm="regcache admin"'},
                )
        return await handler(request)

    return guard


async def bind_admin(runner: web.AppRunner, endpoint: Endpoint) -> None:
    """Listen on `endpoint`; a StartupError naming it if that cannot be."""
    try:
        await web.TCPSite(runner, str(endpoint.address), endpoint.port).start()
    except OSError as e:
        raise StartupError(f"admin listener {endpoint}: {e.strerror or e}") from e
