"""The admin app's guard (allow-list, bearer token) and health answers, in process."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from aiohttp.test_utils import TestClient

from appliance.admin.app import create_admin_app
from appliance.admin.metrics import Metrics

LOOPBACK = [ipaddress.ip_network("127.0.0.0/8")]


async def _ready() -> Sequence[str]:
    return []


async def test_token_is_required_when_set(aiohttp_client: object) -> None:
    app = create_admin_app(Metrics(), _ready, LOOPBACK, token="s3cret")
    client: TestClient = await aiohttp_client(app)  # type: ignore[operator]
    assert (await client.get("/metrics")).status == 401
    wrong = await client.get("/metrics", headers={"Authorization": "Bearer nope"})
    assert wrong.status == 401
    right = await client.get("/metrics", headers={"Authorization": "Bearer s3cret"})
    assert right.status == 200
    assert "# TYPE regcache_requests_total counter" in await right.text()
    assert right.headers["Content-Type"].startswith("text/plain")


async def test_clients_outside_the_allow_list_get_403(aiohttp_client: object) -> None:
    app = create_admin_app(Metrics(), _ready, [ipaddress.ip_network("10.0.0.0/8")], None)
    client: TestClient = await aiohttp_client(app)  # type: ignore[operator]
    response = await client.get("/healthz")
    assert response.status == 403 and "not allowed" in await response.text()


async def test_readyz_reports_problems(aiohttp_client: object) -> None:
    async def broken() -> Sequence[str]:
        return ["store: cannot write"]

    client: TestClient = await aiohttp_client(create_admin_app(Metrics(), broken, LOOPBACK, None))  # type: ignore[operator]
    response = await client.get("/readyz")
    assert response.status == 503
    assert await response.json() == {
        "ready": False, "problems": ["store: cannot write"], "degraded": []
    }  # fmt: skip
    healthy = await client.get("/healthz")
    assert healthy.status == 200


async def test_readyz_is_ready_though_degraded(aiohttp_client: object) -> None:
    """Something that works less well (the shared tier) is said, not a reason to stop
    intercepting: /readyz stays 200."""

    async def lesser() -> Sequence[str]:
        return ["shared tier (bucket b): unreachable"]

    app = create_admin_app(Metrics(), _ready, LOOPBACK, None, degraded=lesser)
    client: TestClient = await aiohttp_client(app)  # type: ignore[operator]
    response = await client.get("/readyz")
    assert response.status == 200
    assert await response.json() == {
        "ready": True, "problems": [], "degraded": ["shared tier (bucket b): unreachable"]
    }  # fmt: skip
