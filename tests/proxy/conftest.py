"""The proxy application in process (aiohttp's test client) over faked ports."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestClient

from appliance.admin.metrics import Metrics
from appliance.proxy.app import Site, create_app
from tests.proxy.fakes import FakeCache, FakePassThrough

REGISTRY = "registry.example"
REALM = "auth.example"
OWN = "own.example"
"""A registry regcache has its own credentials for."""
SITES = {
    REGISTRY: Site(tag_ttl_s=60, max_stale_s=3600, api=True, label=REGISTRY, registry="reg"),
    REALM: Site(tag_ttl_s=0, max_stale_s=0, api=False, label=REALM, registry="reg"),
    OWN: Site(
        tag_ttl_s=60, max_stale_s=3600, api=True, own_credentials=True, label=OWN, registry="own"
    ),
}


def site_for(host: str) -> Site | None:
    """The configured sites; names under REGISTRY are REGISTRY (a wildcard), so a test can
    use a host of its own where a log line is throttled per host."""
    return SITES.get(host) or (SITES[REGISTRY] if host.endswith("." + REGISTRY) else None)


@dataclass
class Proxy:
    client: TestClient[web.Request, web.Application]
    cache: FakeCache
    upstream: FakePassThrough
    metrics: Metrics
    audit: list[dict[str, object]] = field(default_factory=list)

    async def ask(
        self, path: str, method: str = "GET", host: str = REGISTRY, **headers: str
    ) -> ClientResponse:
        fields = {"Host": host, **{k.replace("_", "-"): v for k, v in headers.items()}}
        return await self.client.request(method, path, headers=fields)

    def requests_counted(self, registry: str, route: str, method: str, status: int) -> float:
        labels = {"registry": registry, "route": route, "method": method, "status": str(status)}
        return self.metrics.registry.get_sample_value("regcache_requests_total", labels) or 0.0


@pytest.fixture
async def proxy(
    aiohttp_client: Callable[[Any], Awaitable[TestClient[web.Request, web.Application]]],
) -> Proxy:
    cache, upstream, metrics = FakeCache(), FakePassThrough(), Metrics()
    audit: list[dict[str, object]] = []
    app = create_app(cache, upstream, site_for, metrics, audit.append)
    return Proxy(await aiohttp_client(app), cache, upstream, metrics, audit)


async def registry_error(response: ClientResponse, status: int, code: str) -> str:
    """Assert `response` is a registry error (distribution spec, "Error Codes") with this
    status and code; its message."""
    assert response.status == status, await response.text()
    assert response.content_type == "application/json"
    assert response.headers["Docker-Distribution-API-Version"] == "registry/2.0"
    body = json.loads(await response.text())
    (error,) = body["errors"]
    assert error["code"] == code, error
    assert error["detail"] is None and isinstance(error["message"], str)
    return str(error["message"])
