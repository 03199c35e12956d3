"""The proxy application in process, with the cache faked: what a manifest or blob
request carries upstream."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient

from appliance.cache.answers import Refused, Target
from appliance.proxy.app import Site, create_app


class RecordingCache:
    """Answers every manifest and blob request with upstream's 401, noting the target."""

    def __init__(self) -> None:
        self.targets: list[Target] = []

    def stored_now(self, target: Target, reference: object, *, manifest: bool) -> None:
        return None

    async def manifest(self, target: Target, reference: object, *, head: bool) -> Refused:
        self.targets.append(target)
        return Refused(401, 'Bearer realm="https://auth.example/token"')

    blob = manifest


async def test_only_authorization_accept_and_user_agent_go_with_a_cache_request(
    aiohttp_client: Any,
) -> None:
    """The access gate keys on Authorization alone: a Cookie or an API-key header must
    not reach upstream with a cache request, or a private answer would look anonymous."""
    cache = RecordingCache()
    site = Site(tag_ttl_s=0, max_stale_s=0, api=True, label="registry.example")
    app = create_app(cache, upstream=None, site_for=lambda _h: site)  # type: ignore[arg-type]
    client: TestClient = await aiohttp_client(app)
    response = await client.get(
        "/v2/team/app/manifests/v1",
        headers={
            "Host": "registry.example",
            "Cookie": "session=s3cret",
            "X-Api-Key": "k",
            "Authorization": "Bearer t",
            "Accept": "application/json",
            "User-Agent": "skopeo/1.9",
        },
    )
    assert response.status == 401
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="https://auth.example/token"'
    assert (await response.json())["errors"][0]["code"] == "UNAUTHORIZED"
    (target,) = cache.targets
    assert {k.lower() for k in target.headers} == {"authorization", "accept", "user-agent"}
