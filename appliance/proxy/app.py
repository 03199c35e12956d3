"""The registry-facing aiohttp application.

Until the pull-through cache lands, only the API version check `GET /v2/` is answered
(200, as an anonymous registry would) so that clients can complete their ping.
"""

from __future__ import annotations

import json
import logging
import ssl

from aiohttp import web

from appliance.config import Endpoint

log = logging.getLogger(__name__)

API_VERSION_HEADER = {"Docker-Distribution-API-Version": "registry/2.0"}


def registry_error(status: int, code: str, message: str) -> web.Response:
    """The one place HTTP errors are rendered, in the registry error format."""
    body = {"errors": [{"code": code, "message": message, "detail": None}]}
    return web.Response(
        status=status,
        text=json.dumps(body),
        content_type="application/json",
        headers=API_VERSION_HEADER,
    )


async def _version_check(_request: web.Request) -> web.Response:
    return web.json_response({}, headers=API_VERSION_HEADER)


async def _not_implemented(request: web.Request) -> web.Response:
    return registry_error(404, "UNSUPPORTED", f"{request.path} is not served yet")


def create_app() -> web.Application:
    app = web.Application()
    app.router.add_get("/v2/", _version_check)
    app.router.add_route("*", "/{tail:.*}", _not_implemented)
    return app


async def start_https(
    app: web.Application, endpoints: tuple[Endpoint, ...], context: ssl.SSLContext
) -> web.AppRunner:
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    for endpoint in endpoints:
        site = web.TCPSite(
            runner, str(endpoint.address), endpoint.port, ssl_context=context, backlog=1024
        )
        await site.start()
        log.info("https listening endpoint=%s", endpoint)
    return runner
