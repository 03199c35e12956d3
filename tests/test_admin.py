"""The admin app's guard (allow-list, bearer token) and health answers, in process."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from aiohttp.test_utils import TestClient

from appliance.metrics import Metrics
from appliance.proxy.admin import create_admin_app

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
    assert await response.json() == {"ready": False, "problems": ["store: cannot write"]}
    healthy = await client.get("/healthz")
    assert healthy.status == 200


def test_rate_limit_headers_become_a_gauge_per_host_and_credential() -> None:
    metrics = Metrics()
    url = "https://registry-1.docker.io/v2/library/alpine/manifests/latest"
    got = {"ratelimit-limit": "100;w=21600", "ratelimit-remaining": "97;w=21600"}
    metrics.upstream_reply("HEAD", url, 200, {"Authorization": "Bearer abc"}, got)
    metrics.upstream_reply("HEAD", url, 200, {}, {"ratelimit-remaining": "42"})
    text = metrics.render().decode()
    host = 'host="registry-1.docker.io"'
    assert f'regcache_upstream_ratelimit_remaining{{credential="anonymous",{host}}} 42.0' in text
    assert "Bearer" not in text and "abc" not in text  # only a hash of the credential
    assert text.count("regcache_upstream_ratelimit_remaining{") == 2
    assert f'regcache_upstream_requests_total{{{host},method="HEAD",status="200"}} 2.0' in text
