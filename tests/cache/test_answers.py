"""What the cache answers with: refusals as the client gets them, targets, replies held
in memory."""

from __future__ import annotations

from multidict import CIMultiDict

from appliance.cache.answers import MemoryReply, Refused, Relayed, Target, refusal_or_relayed
from appliance.oci.digest import Digest
from appliance.oci.mediatypes import OCI_MANIFEST
from appliance.oci.routes import Kind
from tests.cache.alpine import ORIGIN, target
from tests.cache.fakes import FakeReply


async def test_upstream_refusals_are_passed_on_as_status_and_challenge(parts) -> None:  # type: ignore[no-untyped-def]
    cache, upstream, _ = parts
    url = f"{ORIGIN}/v2/library/alpine/manifests/3"
    upstream.add("HEAD", url, 401, WWW_Authenticate='Bearer realm="https://auth.docker.io/token"')
    upstream.add("GET", url, 401, b'{"errors":[]}', WWW_Authenticate='Bearer realm="x"')
    answer = await cache.manifest(target(), "3", head=False)
    assert answer == Refused(401, 'Bearer realm="x"')
    upstream.add("GET", url, 429, b"slow down", Retry_After="60")  # trouble: the same way
    assert await cache.manifest(target(), "3", head=False) == Refused(429, None, "60")
    upstream.add("GET", url, 410, b"odd")  # any other error: the same way too
    assert await cache.manifest(target(), "3", head=False) == Refused(410)


def test_a_refusal_keeps_only_the_status_challenge_and_retry_after() -> None:
    sent = CIMultiDict({"www-authenticate": 'Bearer realm="x"', "retry-after": "60",
                        "X-Request-Id": "abc", "Content-Type": "application/json"})  # fmt: skip
    refused = Refused.of(429, sent)
    assert refused == Refused(429, 'Bearer realm="x"', "60")
    assert refused.headers == {"WWW-Authenticate": 'Bearer realm="x"', "Retry-After": "60"}
    assert Refused(404).headers == {}


def test_a_target_names_its_host_and_the_upstream_urls_of_its_repository() -> None:
    digest = Digest.of(b"layer")
    client = Target("https://eu.gcr.io", "proj/app", {"Authorization": "Bearer t"}, frozenset())
    assert client.host == "eu.gcr.io" and client.authorization == "Bearer t"
    assert client.url(Kind.BLOB, digest) == f"https://eu.gcr.io/v2/proj/app/blobs/{digest}"
    assert client.url(Kind.MANIFEST, "v1") == "https://eu.gcr.io/v2/proj/app/manifests/v1"
    assert Target("https://gcr.io", "proj/app", {}, frozenset()).authorization is None


async def test_a_manifest_held_in_memory_replays_as_upstream_sent_it_any_number_of_times() -> None:
    body = b'{"schemaVersion":2}'
    reply = MemoryReply.manifest(body, Digest.of(body), OCI_MANIFEST)
    assert (reply.status, reply.digest, reply.length) == (200, Digest.of(body), len(body))
    assert reply.content_type == OCI_MANIFEST
    for _ in range(2):
        assert await reply.read(1 << 20) == body
        assert b"".join([c async for c in reply.chunks()]) == body
    assert await reply.read(5) == body[:5]


async def test_only_errors_become_refusals_and_their_body_is_read_and_released() -> None:
    ok = FakeReply(200, CIMultiDict())
    assert await refusal_or_relayed(ok) == Relayed(ok) and not ok.closed  # type: ignore[arg-type]
    denied = FakeReply(403, CIMultiDict({"WWW-Authenticate": "Basic"}), b"no")
    assert await refusal_or_relayed(denied) == Refused(403, "Basic")  # type: ignore[arg-type]
    assert denied.closed
