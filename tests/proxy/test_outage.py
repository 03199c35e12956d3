"""What clients get while upstream is down (unreachable) or in trouble (5xx, 429): the
steps before a pull answered by regcache, cached content served, the rest failing clearly."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.cache.answers import Refused
from appliance.cache.ports import UpstreamUnreachable
from appliance.oci.mediatypes import OCI_MANIFEST
from tests.proxy.conftest import OWN, REALM, REGISTRY, Proxy, registry_error
from tests.proxy.fakes import stored

PING = f"https://{REGISTRY}/v2/"
TOKEN = f"/token?scope=repository:team/app:pull&service={REGISTRY}"
DOWN = UpstreamUnreachable("connection refused", REGISTRY)


async def test_the_ping_gets_200_without_a_challenge_while_upstream_is_unreachable(
    proxy: Proxy,
) -> None:
    proxy.upstream.fail("GET", PING, DOWN)
    response = await proxy.ask("/v2/")
    assert response.status == 200 and await response.json() == {}
    assert response.headers["Docker-Distribution-API-Version"] == "registry/2.0"
    assert "WWW-Authenticate" not in response.headers


@pytest.mark.parametrize("status", [503, 429])
async def test_the_ping_gets_200_while_upstream_answers_it_in_trouble(
    proxy: Proxy, status: int
) -> None:
    proxy.upstream.add("GET", PING, status, b"busy", Retry_After="30")
    response = await proxy.ask("/v2/", method="HEAD")
    assert response.status == 200 and "Retry-After" not in response.headers
    assert proxy.upstream.given[0].closed


async def test_upstreams_ping_answer_is_kept_for_a_minute(proxy: Proxy) -> None:
    challenge = f'Bearer realm="https://{REALM}/token",service="{REGISTRY}"'
    proxy.upstream.add("GET", PING, 401, b'{"errors": []}', WWW_Authenticate=challenge)
    for _ in range(3):
        response = await proxy.ask("/v2/")
        assert response.status == 401
        assert response.headers["WWW-Authenticate"] == challenge
        assert await response.read() == b'{"errors": []}'
    assert len(proxy.upstream.sent) == 1


async def test_a_ping_with_credentials_is_asked_upstream_every_time(proxy: Proxy) -> None:
    proxy.upstream.add("GET", PING, 200, b"{}")
    for _ in range(2):
        response = await proxy.ask("/v2/", Authorization="Bearer t")
        assert response.status == 200
    assert len(proxy.upstream.sent) == 2
    assert proxy.upstream.sent[0].headers["Authorization"] == "Bearer t"


async def test_a_registry_regcache_has_credentials_for_answers_the_ping_itself(
    proxy: Proxy,
) -> None:
    response = await proxy.ask("/v2/", host=OWN)
    assert response.status == 200 and await response.json() == {}
    assert "WWW-Authenticate" not in response.headers
    assert proxy.upstream.sent == []


async def test_the_token_step_gets_a_token_that_opens_nothing_while_the_realm_is_down(
    proxy: Proxy,
) -> None:
    proxy.upstream.fail("GET", f"https://{REALM}{TOKEN}", DOWN)
    response = await proxy.ask(TOKEN, host=REALM)
    assert response.status == 200
    body = await response.json()
    assert body == {
        "token": "regcache-outage-token",
        "access_token": "regcache-outage-token",
        "expires_in": 60,
    }


async def test_the_token_step_gets_the_outage_token_while_the_realm_answers_503(
    proxy: Proxy,
) -> None:
    proxy.upstream.add("GET", f"https://{REALM}{TOKEN}", 503)
    response = await proxy.ask(TOKEN, host=REALM)
    assert response.status == 200
    assert (await response.json())["token"] == "regcache-outage-token"
    assert proxy.upstream.given[0].closed


async def test_a_token_realm_that_is_up_is_passed_through(proxy: Proxy) -> None:
    proxy.upstream.add("GET", f"https://{REALM}{TOKEN}", 200, b'{"token": "real"}')
    response = await proxy.ask(TOKEN, host=REALM)
    assert response.status == 200 and await response.read() == b'{"token": "real"}'


async def test_a_post_to_a_token_realm_that_is_down_gets_502_unavailable(proxy: Proxy) -> None:
    proxy.upstream.fail("POST", f"https://{REALM}/token", DOWN)
    response = await proxy.ask("/token", method="POST", host=REALM)
    await registry_error(response, 502, "UNAVAILABLE")


async def test_other_registry_requests_get_502_unavailable_while_upstream_is_down(
    proxy: Proxy,
) -> None:
    proxy.upstream.fail("GET", f"https://{REGISTRY}/v2/team/app/tags/list", DOWN)
    response = await proxy.ask("/v2/team/app/tags/list")
    await registry_error(response, 502, "UNAVAILABLE")


async def test_upstream_trouble_on_a_passed_through_request_is_passed_on_as_it_is(
    proxy: Proxy,
) -> None:
    proxy.upstream.add(
        "GET", f"https://{REGISTRY}/v2/team/app/tags/list", 503, b"down", Retry_After="30"
    )
    response = await proxy.ask("/v2/team/app/tags/list")
    assert response.status == 503 and response.headers["Retry-After"] == "30"
    assert await response.read() == b"down"


async def test_a_cached_tag_is_served_stale_with_a_warning_while_upstream_is_down(
    proxy: Proxy, tmp_path: Path
) -> None:
    proxy.cache.answers(stored(tmp_path, b"{}", OCI_MANIFEST, stale=True))
    response = await proxy.ask("/v2/team/app/manifests/v1")
    assert response.status == 200 and await response.read() == b"{}"
    assert response.headers["Warning"] == '110 regcache "Response is Stale: upstream unavailable"'
    assert proxy.audit[0]["outcome"] == "stale"


@pytest.mark.parametrize(("status", "code"), [(503, "UNAVAILABLE"), (429, "TOOMANYREQUESTS")])
async def test_an_uncached_manifest_gets_upstreams_trouble_status_and_retry_after(
    proxy: Proxy, status: int, code: str
) -> None:
    proxy.cache.answers(Refused(status, None, "30"))
    response = await proxy.ask("/v2/team/nothere/manifests/v1")
    await registry_error(response, status, code)
    assert response.headers["Retry-After"] == "30"


async def test_the_outage_token_is_no_credential_and_says_the_realm_is_down_if_given(
    proxy: Proxy, tmp_path: Path
) -> None:
    """The token realm hung while upstream's registry was up: the client holds the token
    regcache gave it. The cache sees an anonymous client, told that its realm is down
    (upstream's 401 to it is then trouble, not a no) only if regcache did give that token
    for this registry moments ago: sent at any other time it is just anonymous."""
    proxy.cache.answers(stored(tmp_path, b"{}", OCI_MANIFEST))
    path, token = "/v2/team/app/manifests/v1", "Bearer regcache-outage-token"
    assert (await proxy.ask(path, Authorization=token)).status == 200
    assert proxy.cache.asked[0].target.authorization is None
    assert not proxy.cache.asked[0].target.realm_down  # never given: a client's guess
    proxy.upstream.fail("GET", f"https://{REALM}{TOKEN}", DOWN)
    assert (await proxy.ask(TOKEN, host=REALM)).status == 200  # the outage token, given
    await proxy.ask(path, Authorization=token)
    assert proxy.cache.asked[1].target.realm_down
    await proxy.ask(path, host=OWN, Authorization=token)  # another registry: not its realm
    assert not proxy.cache.asked[2].target.realm_down
    await proxy.ask(path, Authorization="Bearer real")
    assert proxy.cache.asked[3].target.authorization == "Bearer real"
    assert not proxy.cache.asked[3].target.realm_down
