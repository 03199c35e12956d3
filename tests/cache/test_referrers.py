"""Referrers through the cache: upstream's API answer kept per credential for a while; a
registry without the API (404) answered from the fallback tag `sha256-<hex>`, read like
any tag (HEAD-revalidated, gated, from the store in an outage) and filtered by
artifactType; no fallback tag either: 404."""

from __future__ import annotations

import asyncio
import hashlib
import json
from dataclasses import replace

from appliance.cache.answers import MemoryReply, Refused, Relayed, Target
from appliance.cache.service import RegistryCache
from appliance.oci.digest import Digest
from appliance.oci.mediatypes import OCI_INDEX
from appliance.store.files import FileBlobStore
from tests.cache.alpine import ORIGIN, target
from tests.cache.fakes import FakeUpstream

SUBJECT = Digest.of(b"the signed image's manifest")
API = f"{ORIGIN}/v2/library/alpine/referrers/{SUBJECT}"
TAG = f"sha256-{SUBJECT.hex}"
SIG, SBOM = "application/vnd.dev.cosign.artifact.sig.v1+json", "application/spdx+json"


def _index(*artifact_types: str) -> bytes:
    manifests = [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                  "digest": "sha256:" + hashlib.sha256(t.encode()).hexdigest(), "size": 10,
                  "artifactType": t} for t in artifact_types]  # fmt: skip
    return json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}).encode()


def _tag_routes(upstream: FakeUpstream, body: bytes) -> None:
    digest = "sha256:" + hashlib.sha256(body).hexdigest()
    url = f"{ORIGIN}/v2/library/alpine/manifests"
    upstream.add("HEAD", f"{url}/{TAG}", 200, Docker_Content_Digest=digest,
                 Content_Type=OCI_INDEX, Content_Length=str(len(body)))  # fmt: skip
    upstream.add("GET", f"{url}/{digest}", 200, body, Docker_Content_Digest=digest,
                 Content_Type=OCI_INDEX)  # fmt: skip


def _listed(answer: object) -> list[str]:
    assert isinstance(answer, Relayed) and isinstance(answer.reply, MemoryReply), answer
    assert answer.reply.status == 200
    return [m["artifactType"] for m in json.loads(answer.reply.body)["manifests"]]


async def test_the_apis_answer_is_kept_per_credential_until_a_push_there(
    parts: tuple[RegistryCache, FakeUpstream, FileBlobStore],
) -> None:
    cache, upstream, _ = parts
    upstream.add("GET", API, 200, _index(SIG), Content_Type=OCI_INDEX)
    for _ in range(3):
        assert _listed(await cache.referrers(target(), SUBJECT, None)) == [SIG]
    assert [c[1] for c in upstream.calls] == [API]  # then kept
    other = Target(ORIGIN, "library/alpine", {"Authorization": "Bearer other"}, frozenset())
    await cache.referrers(other, SUBJECT, None)
    assert len(upstream.calls) == 2  # another credential is asked about for itself
    upstream.add("GET", API, 200, _index(SIG, SBOM), Content_Type=OCI_INDEX)
    await cache.written([("registry-1.docker.io", "library/alpine")])
    assert _listed(await cache.referrers(target(), SUBJECT, None)) == [SIG, SBOM]
    query = "artifactType=application%2Fvnd.dev.cosign.artifact.sig.v1%2Bjson"
    # Go servers spell it Oci-Filters-Applied; a page carries a Link to the next one.
    upstream.add("GET", f"{API}?{query}", 200, _index(SIG), content_type=OCI_INDEX,
                 Oci_Filters_Applied="artifactType", Link='</v2/x?last=y>; rel="next"')  # fmt: skip
    answer = await cache.referrers(target(), SUBJECT, query)
    assert _listed(answer) == [SIG] and upstream.calls[-1][1] == f"{API}?{query}"
    assert isinstance(answer, Relayed)
    assert answer.reply.headers["OCI-Filters-Applied"] == "artifactType"
    assert answer.reply.headers["Content-Type"] == OCI_INDEX and "Link" in answer.reply.headers


async def test_without_the_api_the_fallback_tag_answers_filtered_and_revalidated(
    parts: tuple[RegistryCache, FakeUpstream, FileBlobStore],
) -> None:
    cache, upstream, _ = parts
    client = replace(target(), max_stale_s=3600)  # stale-if-error, as sites have by default
    upstream.add("GET", API, 404, b'{"errors":[{"code":"NOT_FOUND"}]}')
    _tag_routes(upstream, _index(SIG, SBOM))
    assert _listed(await cache.referrers(client, SUBJECT, None)) == [SIG, SBOM]
    first = [(m, url.rsplit("/", 1)[-1]) for m, url, _ in upstream.calls]
    assert first[0] == ("GET", str(SUBJECT))  # the API, once: 404, this registry has none
    answer = await cache.referrers(client, SUBJECT, "artifactType=application%2Fspdx%2Bjson")
    assert _listed(answer) == [SBOM]
    assert isinstance(answer, Relayed) and answer.reply.headers["OCI-Filters-Applied"]
    then = [(m, url.rsplit("/", 1)[-1]) for m, url, _ in upstream.calls[len(first) :]]
    assert then == [("HEAD", TAG)]  # the tag revalidated by HEAD, like any tag; no GET
    _tag_routes(upstream, _index(SIG, SBOM, "application/vnd.in-toto+json"))  # a new one
    assert len(_listed(await cache.referrers(client, SUBJECT, None))) == 3  # at once
    upstream.unreachable.add("registry-1.docker.io")  # an outage: the tag from the store
    assert len(_listed(await cache.referrers(client, SUBJECT, None))) == 3


async def test_no_api_and_no_fallback_tag_is_a_404(
    parts: tuple[RegistryCache, FakeUpstream, FileBlobStore],
) -> None:
    """What oras-go's probe for the API (a digest nobody has) must get to know it is
    absent, and so keep maintaining the fallback tag when it pushes."""
    cache, upstream, _ = parts
    upstream.add("GET", API, 404)
    assert await cache.referrers(target(), SUBJECT, None) == Refused(404)


async def test_a_refusal_of_the_api_or_the_tag_is_the_clients_answer(
    parts: tuple[RegistryCache, FakeUpstream, FileBlobStore],
) -> None:
    cache, upstream, _ = parts
    challenge = 'Bearer realm="https://auth.docker.io/token"'
    upstream.add("GET", API, 401, WWW_Authenticate=challenge)
    assert await cache.referrers(target(), SUBJECT, None) == Refused(401, challenge)


async def test_a_404_about_the_repository_is_the_answer_and_says_nothing_of_the_api(
    parts: tuple[RegistryCache, FakeUpstream, FileBlobStore],
) -> None:
    """A registry with the API may 404 an unknown (or hidden) repository with a registry
    error: that is the client's answer, and no other client or repository loses the API
    over it; only a bare 404 (no such route) is a registry without the API, and only
    for that repository and credential."""
    cache, upstream, _ = parts
    unknown = b'{"errors":[{"code":"NAME_UNKNOWN","message":"repository name not known"}]}'
    upstream.add("GET", API, 404, unknown, Content_Type="application/json")
    assert await cache.referrers(target(), SUBJECT, "") == Refused(404)
    upstream.add("GET", API, 200, _index(SIG), Content_Type=OCI_INDEX)
    assert _listed(await cache.referrers(target(), SUBJECT, "")) == [SIG]  # asked again
    other = f"{ORIGIN}/v2/library/other/referrers/{SUBJECT}"
    upstream.add("GET", other, 404, b"404 page not found\n")  # bare: no such route there
    elsewhere = replace(target(), repository="library/other")
    assert await cache.referrers(elsewhere, SUBJECT, "") == Refused(404)  # no fallback tag
    await cache.written([("registry-1.docker.io", "library/alpine")])
    assert _listed(await cache.referrers(target(), SUBJECT, "")) == [SIG]  # still the API's


async def test_an_answer_asked_for_while_a_push_went_on_is_not_kept(
    parts: tuple[RegistryCache, FakeUpstream, FileBlobStore],
) -> None:
    cache, upstream, _ = parts
    upstream.add("GET", API, 200, _index(SIG), Content_Type=OCI_INDEX)
    upstream.answer_gate = asyncio.Event()
    asked = asyncio.ensure_future(cache.referrers(target(), SUBJECT, ""))
    await asyncio.sleep(0.01)  # the GET is out; a push lands before its answer
    await cache.written([("registry-1.docker.io", "library/alpine")])
    upstream.answer_gate.set()
    assert _listed(await asked) == [SIG]
    upstream.add("GET", API, 200, _index(SIG, SBOM), Content_Type=OCI_INDEX)
    assert _listed(await cache.referrers(target(), SUBJECT, "")) == [SIG, SBOM]  # asked again
