"""The conformance client itself, against a loopback stand-in: Basic and Bearer challenges
answered as clients do, `Location`s absolute and relative, and no name resolved but the
endpoint's — so a target's failure is the target's, not the client's."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.conformance.client import Endpoint, Registry, challenges
from tests.conformance.content import warning_problems

HOST = "registry.client.test"
BASIC = "Basic " + base64.b64encode(b"alice:s3cret").decode()


@dataclass
class StandIn:
    """What the stand-in registry saw."""

    port: int = 0
    unauthorized: int = 0
    token_queries: list[list[tuple[str, str]]] = field(default_factory=list)
    token_authorization: list[str | None] = field(default_factory=list)


def stand_in(seen: StandIn) -> web.Application:
    async def token(request: web.Request) -> web.Response:
        seen.token_queries.append(list(request.query.items()))
        seen.token_authorization.append(request.headers.get("Authorization"))
        scopes = " ".join(request.query.getall("scope", []))
        return web.json_response({"token": f"tok {scopes}"})

    def refuse(challenge: str) -> web.Response:
        seen.unauthorized += 1
        return web.Response(status=401, headers={"WWW-Authenticate": challenge})

    async def bearer(request: web.Request) -> web.Response:
        scope = request.query.get("scope", f"repository:{request.match_info['repo']}:pull")
        if request.headers.get("Authorization") != f"Bearer tok {scope}":
            return refuse(f'Bearer realm="http://{HOST}/token",service="svc",scope="{scope}"')
        return web.json_response({"ok": True})

    async def basic(request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != BASIC:
            return refuse('Basic realm="stand-in"')
        return web.json_response({"ok": True})

    async def locate(request: web.Request) -> web.Response:
        target = "/v2/loc/blobs/uploads/next?_state=a%2Bb%3D%3D"
        absolute = request.match_info["how"] == "absolute"
        location = f"http://{HOST}{target}" if absolute else target
        return web.Response(status=202, headers={"Location": location})

    async def echo(request: web.Request) -> web.Response:
        return web.json_response({"host": request.host, "query": request.raw_path})

    app = web.Application()
    app.router.add_get("/token", token)
    app.router.add_get("/v2/{repo:bearer/[a-z]+}/tags/list", bearer)
    app.router.add_get("/v2/basic/x/tags/list", basic)
    app.router.add_post("/v2/loc/{how}/blobs/uploads/", locate)
    app.router.add_put("/v2/loc/blobs/uploads/next", echo)
    return app


@pytest.fixture
async def server() -> AsyncIterator[tuple[TestServer, StandIn]]:
    seen = StandIn()
    running = TestServer(stand_in(seen), host="127.0.0.1")
    await running.start_server()
    seen.port = running.port or 0
    try:
        yield running, seen
    finally:
        await running.close()


def endpoint_of(seen: StandIn, auth: tuple[str, str] | None = None) -> Endpoint:
    return Endpoint(host=HOST, connect=f"127.0.0.1:{seen.port}", auth=auth)


async def test_a_basic_challenge_is_answered_once_then_credentials_go_first(
    server: tuple[TestServer, StandIn],
) -> None:
    _, seen = server
    async with Registry(endpoint_of(seen, ("alice", "s3cret"))) as registry:
        for _ in range(3):
            reply = await registry.request("GET", "/v2/basic/x/tags/list")
            assert reply.status == 200, reply
    assert seen.unauthorized == 1


async def test_without_credentials_a_basic_challenge_is_the_answer(
    server: tuple[TestServer, StandIn],
) -> None:
    _, seen = server
    async with Registry(endpoint_of(seen)) as registry:
        reply = await registry.request("GET", "/v2/basic/x/tags/list")
    assert reply.status == 401


async def test_a_bearer_challenge_gets_a_token_for_its_scope_kept_per_repository(
    server: tuple[TestServer, StandIn],
) -> None:
    _, seen = server
    async with Registry(endpoint_of(seen, ("alice", "s3cret"))) as registry:
        for repo in ("bearer/a", "bearer/a", "bearer/b"):
            reply = await registry.request("GET", f"/v2/{repo}/tags/list")
            assert reply.status == 200, reply
        assert registry.token_requests == 2
    assert seen.token_queries == [
        [("service", "svc"), ("scope", "repository:bearer/a:pull")],
        [("service", "svc"), ("scope", "repository:bearer/b:pull")],
    ]
    assert seen.token_authorization == [BASIC, BASIC]


async def test_a_challenge_naming_two_scopes_asks_the_realm_for_each(
    server: tuple[TestServer, StandIn],
) -> None:
    _, seen = server
    scope = "repository:bearer/a:pull,push repository:bearer/b:pull"
    async with Registry(endpoint_of(seen)) as registry:
        reply = await registry.request("GET", "/v2/bearer/a/tags/list", query={"scope": scope})
        assert reply.status == 200, reply
    assert seen.token_queries == [
        [("service", "svc"), ("scope", "repository:bearer/a:pull,push"),
         ("scope", "repository:bearer/b:pull")],
    ]  # fmt: skip
    assert seen.token_authorization == [None]


@pytest.mark.parametrize("how", ["relative", "absolute"])
async def test_a_location_resolves_to_the_endpoint_with_its_query_intact(
    server: tuple[TestServer, StandIn], how: str
) -> None:
    _, seen = server
    async with Registry(endpoint_of(seen)) as registry:
        started = await registry.request("POST", f"/v2/loc/{how}/blobs/uploads/")
        assert started.location().host == HOST
        done = await registry.request("PUT", started.location(), query={"digest": "sha256:ab"})
    assert done.status == 200, done
    assert done.json() == {
        "host": HOST,
        "query": "/v2/loc/blobs/uploads/next?_state=a%2Bb%3D%3D&digest=sha256:ab",
    }


async def test_no_name_but_the_endpoints_resolves(server: tuple[TestServer, StandIn]) -> None:
    _, seen = server
    async with Registry(endpoint_of(seen)) as registry:
        with pytest.raises(aiohttp.ClientConnectorError) as refused:
            await registry.request("GET", "http://elsewhere.test/v2/")
    assert "resolves only registry.client.test" in str(refused.value.os_error)


def test_challenges_are_read_by_scheme() -> None:
    found = challenges(['Bearer realm="https://a/t",service="s",scope="x y"', 'Basic realm="r"'])
    assert found == {"bearer": {"realm": "https://a/t", "service": "s", "scope": "x y"},
                     "basic": {"realm": "r"}}  # fmt: skip


def test_an_endpoint_refuses_features_it_does_not_know() -> None:
    with pytest.raises(ValueError, match="unknown features"):
        Endpoint(host=HOST, connect="127.0.0.1:1", features=frozenset({"referers"}))
    with pytest.raises(ValueError, match="unknown feature"):
        Endpoint(host=HOST, connect="127.0.0.1:1").claims("referers")


def test_warnings_are_judged_by_the_spec_rules() -> None:
    good = ['299 - "Your auth token will expire in 30 seconds."', '299 - "say \\"hi\\""']
    assert warning_problems([good, []]) == []
    bad = ['199 - "old code"', '299 registry "agent"', '299 - "dated" "Sat, 05 Dec 2026"']
    assert len(warning_problems([bad])) == 3
    assert warning_problems([['299 - "' + "x" * 4100 + '"']]) != []
