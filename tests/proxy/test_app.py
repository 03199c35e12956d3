"""The proxy application in process, with the cache faked: what a manifest or blob
request carries upstream, and that it passes through while the cache is not ready."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient

from appliance.cache.answers import Refused, Target
from appliance.oci.digest import Digest
from appliance.proxy.app import Site, create_app
from tests.proxy.fakes import FakeCache, FakePassThrough, stored


class RecordingCache:
    uploads = None  # pushes only pass through
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


async def test_until_the_cache_is_ready_manifests_and_blobs_pass_through_uncached(
    aiohttp_client: Any, tmp_path: Path
) -> None:
    """Start-up reconciles the store in the background: meanwhile every request is
    relayed to upstream as sent, and the cache (its index incomplete) is never asked."""
    cache, upstream = FakeCache(), FakePassThrough()
    cache.answers(stored(tmp_path, b"from the store"))
    blob = Digest.of(b"layer")
    base = "https://registry.example/v2/team/app"
    upstream.add("GET", f"{base}/blobs/{blob}", 200, b"layer", Docker_Content_Digest=str(blob))
    upstream.add("HEAD", f"{base}/manifests/v1", 200, Content_Length="321")
    ready = False
    site = Site(tag_ttl_s=0, max_stale_s=0, api=True, label="registry.example")
    app = create_app(cache, upstream, lambda _h: site, caching=lambda: ready)
    client: TestClient = await aiohttp_client(app)
    headers = {"Host": "registry.example", "Authorization": "Bearer t"}
    got = await client.get(f"/v2/team/app/blobs/{blob}", headers=headers)
    assert got.status == 200 and await got.read() == b"layer"
    assert got.headers["Docker-Content-Digest"] == str(blob)
    head = await client.head("/v2/team/app/manifests/v1", headers=headers)
    assert head.status == 200 and head.headers["Content-Length"] == "321"
    assert [(s.method, s.url) for s in upstream.sent] == [
        ("GET", f"{base}/blobs/{blob}"), ("HEAD", f"{base}/manifests/v1"),
    ]  # fmt: skip
    assert all(s.headers["Authorization"] == "Bearer t" for s in upstream.sent)
    assert cache.asked == []
    ready = True
    got = await client.get(f"/v2/team/app/blobs/{blob}", headers=headers)
    assert await got.read() == b"from the store"
    assert [a.what for a in cache.asked] == ["blob"] and len(upstream.sent) == 2
