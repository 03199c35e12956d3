"""Requests the cache does not answer go to upstream as they came, bodies streamed both
ways."""

from __future__ import annotations

from multidict import CIMultiDict

from appliance.cache.answers import MemoryReply, Relayed
from appliance.oci.digest import Digest
from appliance.oci.mediatypes import OCI_INDEX
from tests.proxy.conftest import REALM, REGISTRY, Proxy

UPLOAD = f"https://{REGISTRY}/v2/team/app/blobs/uploads/abc?digest=sha256:ff"


async def test_a_push_passes_through_with_its_body_and_headers(proxy: Proxy) -> None:
    proxy.upstream.add("PUT", UPLOAD, 201, b"", Location="/v2/team/app/blobs/sha256:ff")
    response = await proxy.client.put(
        "/v2/team/app/blobs/uploads/abc?digest=sha256:ff",
        data=b"x" * 300_000,
        headers={"Host": REGISTRY, "Authorization": "Bearer t", "Expect": "100-continue"},
    )
    assert response.status == 201
    assert response.headers["Location"] == "/v2/team/app/blobs/sha256:ff"
    (sent,) = proxy.upstream.sent
    assert (sent.method, sent.url, sent.body) == ("PUT", UPLOAD, b"x" * 300_000)
    assert sent.headers["Authorization"] == "Bearer t"
    assert sent.headers["Content-Length"] == "300000"
    assert "Host" not in sent.headers and "Expect" not in sent.headers
    assert proxy.cache.asked == []


async def test_repeated_request_headers_stay_repeated(proxy: Proxy) -> None:
    url = f"https://{REGISTRY}/v2/team/app/tags/list"
    proxy.upstream.add("GET", url, 200, b'{"tags": ["v1"]}')
    headers = CIMultiDict([("Host", REGISTRY), ("Accept", "a/b"), ("Accept", "c/d")])
    response = await proxy.client.get("/v2/team/app/tags/list", headers=headers)
    assert response.status == 200 and await response.read() == b'{"tags": ["v1"]}'
    assert proxy.upstream.sent[0].headers.getall("Accept") == ["a/b", "c/d"]
    assert proxy.upstream.given[0].closed


async def test_referrers_are_answered_by_the_cache_with_the_query_as_sent(
    proxy: Proxy,
) -> None:
    """Never as a hit for the subject's digest (its manifest is not its referrers)."""
    digest = Digest.of(b"subject")
    index = b'{"schemaVersion": 2, "manifests": []}'
    proxy.cache.hit = None
    proxy.cache.answers(Relayed(MemoryReply(200, {"Content-Type": OCI_INDEX}, index)))
    response = await proxy.ask(f"/v2/team/app/referrers/{digest}?artifactType=a%2Fb%2Bjson")
    assert response.status == 200 and await response.read() == index
    (asked,) = proxy.cache.asked
    assert (asked.what, asked.reference, asked.query) == (
        "referrers",
        digest,
        "artifactType=a/b%2Bjson",
    )  # as sent (the client's / kept)
    assert proxy.upstream.sent == []
    assert proxy.requests_counted(REGISTRY, "referrers", "GET", 200) == 1


async def test_a_manifest_push_is_not_answered_by_the_cache(proxy: Proxy) -> None:
    url = f"https://{REGISTRY}/v2/team/app/manifests/v1"
    proxy.upstream.add("PUT", url, 201)
    response = await proxy.ask("/v2/team/app/manifests/v1", method="PUT")
    assert response.status == 201
    assert proxy.cache.asked == [] and [s.method for s in proxy.upstream.sent] == ["PUT"]


async def test_a_head_passed_through_gets_no_body(proxy: Proxy) -> None:
    url = f"https://{REGISTRY}/v2/team/app/tags/list"
    proxy.upstream.add("HEAD", url, 200, b"not sent", Content_Type="application/json")
    response = await proxy.ask("/v2/team/app/tags/list", method="HEAD")
    assert response.status == 200 and await response.read() == b""


async def test_a_successful_write_is_reported_to_the_cache_before_it_is_answered(
    proxy: Proxy,
) -> None:
    base = f"https://{REGISTRY}/v2/team/app"
    proxy.upstream.add("PATCH", f"{base}/blobs/uploads/abc", 202)
    proxy.upstream.add("DELETE", f"{base}/manifests/v1", 202)
    proxy.upstream.add("PUT", f"{base}/manifests/v2", 400)
    proxy.upstream.add("PUT", f"https://{REALM}/v2/team/app/manifests/v1", 201)
    assert (await proxy.ask("/v2/team/app/blobs/uploads/abc", method="PATCH")).status == 202
    assert proxy.cache.writes == []  # a chunk of an upload: nothing pullable changed yet
    assert (await proxy.ask("/v2/team/app/manifests/v1", method="DELETE")).status == 202
    assert proxy.cache.writes == [[(REGISTRY, "team/app")]]
    assert (await proxy.ask("/v2/team/app/manifests/v2", method="PUT")).status == 400
    assert (await proxy.ask("/v2/team/app/manifests/v1", "PUT", host=REALM)).status == 201
    assert (await proxy.ask("/v2/team/app/tags/list", method="GET")).status == 404
    assert len(proxy.cache.writes) == 1  # a refused write, a token realm's, a read: none
