"""Mirror mode in the proxy application: a request to the mirror's name reaches the cache
and upstream exactly as an intercepted one would, and its answer is worded as a proxy's
(`OCI-Namespace`, realms relayed through the mirror); pushes and unknown registries are
refused there."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient

from appliance.admin.metrics import Metrics
from appliance.cache.answers import Refused
from appliance.proxy.app import Site, create_app
from appliance.proxy.mirrorfront import MirrorFront
from tests.proxy.fakes import FakeCache, FakePassThrough, stored

MIRROR = "regcache.build.internal"
HUB = "registry-1.docker.io"
SITES = {
    MIRROR: Site(0, 0, api=True, label=MIRROR, registry=MIRROR, mirror=True),
    HUB: Site(0, 3600, api=True, label=HUB, registry="docker.io"),
    "auth.docker.io": Site(0, 0, api=False, label="auth.docker.io", registry="docker.io"),
    "ghcr.io": Site(0, 3600, api=True, label="ghcr.io", registry="ghcr.io"),
    "local.build.internal": Site(0, 0, api=True, label="local", registry="local", local=True),
}
ORIGINS = {"docker.io": HUB, HUB: HUB, "ghcr.io": "ghcr.io"}


async def _client(aiohttp_client: Any, cache: FakeCache, upstream: FakePassThrough,
                  metrics: Metrics | None = None) -> TestClient:  # fmt: skip
    front = MirrorFront(SITES.get, ORIGINS.get, "docker.io")
    app = create_app(cache, upstream, SITES.get, metrics, mirror=front)
    client: TestClient = await aiohttp_client(app)
    return client


async def test_ns_picks_the_registry_and_the_answer_echoes_it(
    aiohttp_client: Any, tmp_path: Any
) -> None:
    cache, metrics = FakeCache(), Metrics()
    cache.answers(stored(tmp_path, b"manifest"))
    client = await _client(aiohttp_client, cache, FakePassThrough(), metrics)
    headers = {"Host": f"{MIRROR}:5443", "Authorization": "Bearer t"}
    got = await client.get("/v2/org/app/manifests/v1?ns=ghcr.io", headers=headers)
    assert got.status == 200 and await got.read() == b"manifest"
    assert got.headers["OCI-Namespace"] == "ghcr.io"
    asked = cache.asked[0]
    assert (asked.target.origin, asked.target.repository, asked.reference) == (
        "https://ghcr.io", "org/app", "v1")  # fmt: skip
    assert asked.target.headers["Authorization"] == "Bearer t"  # the access gate's key
    crlf = await client.get("/v2/org/app/manifests/v1?ns=GHCR.io%0D%0A", headers=headers)
    assert crlf.status == 200 and crlf.headers["OCI-Namespace"] == "ghcr.io"  # echoed clean
    sample = {"registry": "ghcr.io", "route": "manifest", "method": "GET", "status": "200"}
    assert metrics.registry.get_sample_value("regcache_requests_total", sample) == 2.0


async def test_without_ns_docker_hub_is_asked_with_library(
    aiohttp_client: Any, tmp_path: Any
) -> None:
    cache = FakeCache()
    cache.answers(stored(tmp_path, b"blob"))
    client = await _client(aiohttp_client, cache, FakePassThrough())
    got = await client.get("/v2/alpine/manifests/3", headers={"Host": MIRROR})
    assert got.status == 200 and "OCI-Namespace" not in got.headers
    got = await client.get("/v2/ghcr.io/org/app/manifests/v2", headers={"Host": MIRROR})
    assert got.status == 200
    assert [(a.target.origin, a.target.repository) for a in cache.asked] == [
        (f"https://{HUB}", "library/alpine"), ("https://ghcr.io", "org/app")]  # fmt: skip


async def test_challenges_send_the_client_to_the_relay_on_the_mirror(aiohttp_client: Any) -> None:
    cache, upstream = FakeCache(), FakePassThrough()
    realm = 'Bearer realm="https://auth.docker.io/token",service="registry.docker.io"'
    cache.answers(Refused(401, realm))
    upstream.add("GET", f"https://{HUB}/v2/", 401, b"{}", WWW_Authenticate=realm)
    client = await _client(aiohttp_client, cache, upstream)
    relayed = f'Bearer realm="https://{MIRROR}:5443/_realm/auth.docker.io/token"'
    for path in ("/v2/library/a/manifests/v1?ns=docker.io", "/v2/"):
        got = await client.get(path, headers={"Host": f"{MIRROR}:5443"})
        assert got.status == 401
        assert got.headers.getall("WWW-Authenticate") == [
            relayed + ',service="registry.docker.io"']  # fmt: skip
    direct = await client.get("/v2/library/a/manifests/v1", headers={"Host": HUB})
    assert direct.headers["WWW-Authenticate"] == realm  # intercepted traffic: unchanged


async def test_the_relay_asks_the_real_realm_with_the_clients_credentials(
    aiohttp_client: Any,
) -> None:
    upstream = FakePassThrough()
    want = "https://auth.docker.io/token?service=registry.docker.io&scope=repository:org/app:pull"
    upstream.add("GET", want, 200, b'{"token": "t"}')
    client = await _client(aiohttp_client, FakeCache(), upstream)
    got = await client.get(
        "/_realm/auth.docker.io/token?service=registry.docker.io"
        "&scope=repository:docker.io/org/app:pull",
        headers={"Host": MIRROR, "Authorization": "Basic YWxpY2U6eA=="},
    )
    assert got.status == 200 and await got.read() == b'{"token": "t"}'
    (sent,) = upstream.sent
    assert sent.url == want
    assert sent.headers["Authorization"] == "Basic YWxpY2U6eA=="


async def test_pushes_unknown_registries_and_foreign_relays_are_refused(
    aiohttp_client: Any,
) -> None:
    upstream = FakePassThrough()
    client = await _client(aiohttp_client, FakeCache(), upstream)
    cases = [
        ("POST", "/v2/library/a/blobs/uploads/?ns=docker.io", 405, "UNSUPPORTED"),
        ("PUT", "/v2/org/app/manifests/v1?ns=ghcr.io", 405, "UNSUPPORTED"),
        ("GET", "/v2/a/b/manifests/v1?ns=quay.io", 421, "DENIED"),
        ("GET", "/v2/quay.io/b/c/manifests/v1", 421, "DENIED"),
        ("GET", "/_realm/login.example/token", 421, "DENIED"),
        ("GET", "/_realm/local.build.internal/token", 421, "DENIED"),
        ("DELETE", "/_realm/auth.docker.io/token", 405, "UNSUPPORTED"),
        # the relay is for token realms: not a way to push, or to pull around the mirror
        ("POST", "/_realm/ghcr.io/v2/org/app/blobs/uploads/", 405, "UNSUPPORTED"),
        ("GET", "/_realm/ghcr.io/v2/org/app/manifests/v1", 405, "UNSUPPORTED"),
        ("GET", "/_realm/ghcr.io/v2/", 405, "UNSUPPORTED"),
        ("POST", "/_realm/ghcr.io/v2/org/app/blob%73/uploads/?digest=sha256:0", 405, "UNSUPPORTED"),
        ("POST", "/_realm/ghcr.io//x/v2/org/app/blobs/uploads/", 405, "UNSUPPORTED"),
        # a scope naming another served registry whose realm cannot be told: refused, the
        # client's credentials never go to the realm asked (docker.io's)
        ("GET", "/_realm/auth.docker.io/token?scope=repository:ghcr.io/o/a:pull", 421, "DENIED"),
        ("GET", "/v2/a%2F..%2Fb/manifests/v1?ns=ghcr.io", 400, "NAME_INVALID"),
    ]
    for method, path, status, code in cases:
        got = await client.request(method, path, headers={"Host": MIRROR})
        assert got.status == status, (method, path, await got.text())
        if code is not None:
            assert (await got.json())["errors"][0]["code"] == code
    # None of it went anywhere (the ghcr.io ping asked for its realm aside).
    assert [s.url for s in upstream.sent if not s.url.endswith("/v2/")] == []


async def test_a_token_request_for_another_registry_goes_to_that_registrys_realm(
    aiohttp_client: Any,
) -> None:
    """podman takes the challenge of the mirror's ping (the default registry's) for every
    registry it names in the path: a scope naming ghcr.io is sent to ghcr.io's realm,
    with its service, as ghcr.io's anonymous ping names them (asked once, remembered)."""
    upstream = FakePassThrough()
    challenge = 'Bearer realm="https://ghcr.io/token",service="ghcr.io"'
    upstream.add("GET", "https://ghcr.io/v2/", 401, b"{}", WWW_Authenticate=challenge)
    want = "https://ghcr.io/token?service=ghcr.io&scope=repository:org/app:pull"
    upstream.add("GET", want, 200, b'{"token": "g"}')
    client = await _client(aiohttp_client, FakeCache(), upstream)
    for _ in range(2):
        got = await client.get(
            "/_realm/auth.docker.io/token?service=registry.docker.io"
            "&scope=repository:ghcr.io/org/app:pull",
            headers={"Host": MIRROR},
        )
        assert got.status == 200 and await got.read() == b'{"token": "g"}'
    assert [s.url for s in upstream.sent] == ["https://ghcr.io/v2/", want, want]
    # The same registry's realm is left as asked; so is a scope naming no registry.
    hub = "https://auth.docker.io/token?service=registry.docker.io&scope=repository:library/a:pull"
    upstream.add("GET", hub, 200, b'{"token": "h"}')
    for scope in ("repository:docker.io/library/a:pull", "repository:library/a:pull"):
        got = await client.get(f"/_realm/auth.docker.io/token?service=registry.docker.io"
                               f"&scope={scope}", headers={"Host": MIRROR})  # fmt: skip
        assert await got.read() == b'{"token": "h"}'
