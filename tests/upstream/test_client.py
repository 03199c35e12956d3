"""The upstream client against real HTTP servers on loopback: redirects, credentials,
the cross-registry anonymous token step, hop-by-hop headers."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from appliance.cache.ports import UpstreamUnsafe
from appliance.config.hostnames import HostSet
from appliance.upstream.client import UpstreamClient, UpstreamError, end_to_end
from appliance.upstream.targets import TargetPolicy
from tests.upstream.loopback import LAB, loopback, serving


@pytest.fixture
async def server() -> AsyncIterator[tuple[TestServer, list[tuple[str, str, str | None]]]]:
    seen: list[tuple[str, str, str | None]] = []

    async def handle(request: web.Request) -> web.StreamResponse:
        host = (request.host or "").split(":")[0]
        seen.append((host, request.path, request.headers.get("Authorization")))
        port = request.url.port
        if host == "reg.test" and request.path == "/v2/x/blobs/abs":
            raise web.HTTPTemporaryRedirect(f"http://cdn.test:{port}/signed?sig=1")
        if host == "reg.test" and request.path == "/v2/x/blobs/rel":
            raise web.HTTPFound("../y/blobs/data")
        if host == "reg.test" and request.path == "/v2/x/manifests/k8s":
            raise web.HTTPTemporaryRedirect(f"http://pkg.test:{port}/v2/p/manifests/k8s")
        if host == "pkg.test" and request.path == "/token":
            assert request.query["scope"] == "repository:p:pull"
            return web.json_response({"token": "anon-token", "expires_in": 300})
        if host == "pkg.test" and request.path == "/v2/p/manifests/k8s":
            if request.headers.get("Authorization") != "Bearer anon-token":
                return web.Response(status=401, headers={"WWW-Authenticate":
                    f'Bearer realm="http://pkg.test:{port}/token",service="pkg.test",'
                    'scope="repository:p:pull"'})  # fmt: skip
            return web.Response(text="manifest")
        if host == "reg.test" and request.path.startswith("/v2/x/blobs/to/"):
            raise web.HTTPTemporaryRedirect(
                request.path.removeprefix("/v2/x/blobs/to/").replace("PORT", str(port))
            )
        if host == "reg.test" and request.path.startswith("/v2/x/manifests/realm/"):
            realm = request.path.removeprefix("/v2/x/manifests/realm/").replace("PORT", str(port))
            return web.Response(status=401, headers={"WWW-Authenticate": f'Bearer realm="{realm}"'})
        if host == "reg.test" and request.path == "/loop":
            raise web.HTTPFound("/loop")
        hop = {"Connection": "close, X-Hop", "X-Hop": "1", "X-Keep": "1"}
        return web.Response(text=f"{host}{request.path}", headers=hop)

    async with serving(handle) as test_server:
        yield test_server, seen


@pytest.fixture
async def client() -> AsyncIterator[UpstreamClient]:
    c = UpstreamClient(loopback, None, connect_timeout_s=5, read_timeout_s=5, targets=LAB)
    yield c
    await c.close()


async def get(client: UpstreamClient, url: str, **headers: str) -> tuple[int, bytes]:
    reply = await client.fetch("GET", url, headers)
    try:
        return reply.status, await reply.read(1 << 20)
    finally:
        reply.close()


async def test_authorization_is_dropped_when_a_redirect_leaves_the_registry(server, client) -> None:  # type: ignore[no-untyped-def]
    srv, seen = server
    status, body = await get(
        client, f"http://reg.test:{srv.port}/v2/x/blobs/abs", Authorization="Bearer secret"
    )
    assert (status, body) == (200, b"cdn.test/signed")
    assert seen == [("reg.test", "/v2/x/blobs/abs", "Bearer secret"), ("cdn.test", "/signed", None)]


async def test_relative_location_is_resolved_and_keeps_credentials(server, client) -> None:  # type: ignore[no-untyped-def]
    srv, seen = server
    status, body = await get(
        client, f"http://reg.test:{srv.port}/v2/x/blobs/rel", Authorization="Basic x"
    )
    assert (status, body) == (200, b"reg.test/v2/x/y/blobs/data")  # RFC 3986 5.2
    assert seen[-1] == ("reg.test", "/v2/x/y/blobs/data", "Basic x")


async def test_redirect_to_another_registry_does_its_anonymous_token_step(server, client) -> None:  # type: ignore[no-untyped-def]
    srv, seen = server
    status, body = await get(
        client, f"http://reg.test:{srv.port}/v2/x/manifests/k8s", Authorization="Bearer mine"
    )
    assert (status, body) == (200, b"manifest")
    assert ("pkg.test", "/v2/p/manifests/k8s", "Bearer anon-token") in seen
    assert all(auth != "Bearer mine" for host, _, auth in seen if host == "pkg.test")
    before = len(seen)
    await get(client, f"http://reg.test:{srv.port}/v2/x/manifests/k8s")
    assert not [s for s in seen[before:] if s[1] == "/token"]  # the token was cached


async def test_redirect_loops_are_bounded(server, client) -> None:  # type: ignore[no-untyped-def]
    from appliance.upstream.client import UpstreamError

    srv, _ = server
    with pytest.raises(UpstreamError, match="redirects"):
        await get(client, f"http://reg.test:{srv.port}/loop")


async def test_hop_by_hop_headers_are_stripped(server, client) -> None:  # type: ignore[no-untyped-def]
    srv, _ = server
    reply = await client.send(
        "GET", f"http://reg.test:{srv.port}/plain", {"TE": "trailers", "X-Mine": "1"}
    )
    reply.close()
    assert "X-Hop" not in reply.headers and "Connection" not in reply.headers
    assert reply.headers["X-Keep"] == "1"
    assert dict(
        end_to_end({"Connection": "x-a", "X-A": "1", "Keep-Alive": "5", "Accept": "b"})
    ) == {"Accept": "b"}


@pytest.mark.parametrize(
    "location",
    [
        "http://cdn.test:PORT/signed",  # plain HTTP
        "https://127.0.0.1:9580/metrics",  # the admin listener
        "https://[::ffff:127.0.0.1]:9580/metrics",
        "https://169.254.169.254/latest/meta-data/",  # a cloud metadata service
        "https://[fd00:ec2::254]/latest/meta-data/",
        "https://0.0.0.0:9580/",
        "ftp://cdn.test/x",
    ],
)
async def test_redirects_never_lead_to_plain_http_loopback_or_metadata(server, location) -> None:  # type: ignore[no-untyped-def]
    srv, seen = server
    strict = UpstreamClient(loopback, None, 5, 5, targets=TargetPolicy(
        HostSet(frozenset(), ()), static=frozenset({"reg.test"})))  # fmt: skip
    try:
        with pytest.raises(UpstreamUnsafe):
            await get(strict, f"http://reg.test:{srv.port}/v2/x/blobs/to/{location}")
        assert [h for h, _, _ in seen] == ["reg.test"]  # nothing else was asked
        with pytest.raises(UpstreamUnsafe):  # a token realm is a URL upstream chose too
            reply = await strict.fetch_anonymous(
                "GET", f"http://reg.test:{srv.port}/v2/x/manifests/realm/{location}"
            )
            reply.close()
    finally:
        await strict.close()


async def test_a_name_that_resolves_to_loopback_is_not_connected_to(server) -> None:  # type: ignore[no-untyped-def]
    srv, seen = server
    strict = UpstreamClient(loopback, None, 5, 5, targets=TargetPolicy(
        HostSet(frozenset(), ()), static=frozenset({"reg.test"})))  # fmt: skip
    try:
        with pytest.raises(UpstreamError, match=r"DNSError Cannot connect to host sneaky\.test"):
            await get(strict, f"http://reg.test:{srv.port}/v2/x/blobs/to/https://sneaky.test:PORT/")
        assert [h for h, _, _ in seen] == ["reg.test"]
    finally:
        await strict.close()
