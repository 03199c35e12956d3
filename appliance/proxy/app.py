"""The registry-facing aiohttp application.

Until the pull-through cache lands, only the API version check `GET /v2/` is answered
(200, as an anonymous registry would) so that clients can complete their ping.
"""

from __future__ import annotations

import json
import logging

from aiohttp import web

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


async def start_runner(app: web.Application) -> web.AppRunner:
    """Set up `app`; the TLS listener feeds connections to `runner.server`."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    return runner
