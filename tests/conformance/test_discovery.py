"""OCI distribution-spec conformance, the Content Discovery category: the tags list and its
`n`/`last`/`Link` paging, the referrers API and its tag-schema fallback. Citations are
spec.md lines of v1.1.1 unless marked `main` (opencontainers/distribution-spec@967efdc)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.conformance.client import Endpoint, Registry, Reply
from tests.conformance.content import (
    INDEX,
    Blob,
    Manifest,
    assert_error,
    get_manifest,
    image_index,
    image_manifest,
    next_link,
    push_blob,
    push_image,
    push_manifest,
    random_config,
    random_image,
    refuse,
    require,
    unknown_digest,
)

pytestmark = pytest.mark.discovery

# Pushed in this order: neither sorted nor reverse-sorted, mixed case, no two equal but for
# case (where "lexical" and "ASCIIbetical" order could not both hold).
TAGS = ["b2", "A1", "c3", "_z", "a2", "C1", "1x", "B3"]
SBOM, SIGNATURE_CONFIG = "application/vnd.conformance.sbom", "application/vnd.conformance.sig"


async def push_tags(registry: Registry, repo: str, tags: list[str]) -> None:
    image = random_image()
    await push_image(registry, repo, tags[0], image)
    for tag in tags[1:]:
        reply = await push_manifest(registry, repo, tag, image.manifest)
        assert reply.status == 201, reply


async def tags_list(registry: Registry, repo: str, **query: str) -> tuple[Reply, list[str]]:
    """The answer and its tags, after checking the body's shape (l.525-535)."""
    reply = await registry.request("GET", f"/v2/{repo}/tags/list", query=query or None)
    assert reply.status == 200, reply
    body = reply.json()
    assert body["name"] == repo, reply
    assert isinstance(body["tags"], list), reply
    return reply, body["tags"]


async def test_tags_list_names_the_repository_and_its_tags(registry: Registry, repo: str) -> None:
    """l.521, l.525: "Assuming a repository is found, this request MUST return a `200 OK`";
    "the response MUST be a json body" `{"name": "<name>", "tags": [...]}`."""
    await push_tags(registry, repo, TAGS)
    _, tags = await tags_list(registry, repo)
    assert sorted(tags) == sorted(TAGS)


async def test_tags_list_is_in_lexical_order(registry: Registry, repo: str) -> None:
    """l.523 MUST: "the tags MUST be in lexical order (i.e. case-insensitive alphanumeric
    order)"; main l.568 also allows "ASCIIbetical" (Go's `sort.Strings`) order."""
    await push_tags(registry, repo, TAGS)
    _, tags = await tags_list(registry, repo)
    assert tags in (sorted(TAGS), sorted(TAGS, key=str.casefold)), tags


async def test_tags_list_with_n_answers_n_tags_or_a_link(registry: Registry, repo: str) -> None:
    """l.543-544, l.548 MUST: with `n`, fewer than n tags only "when the total number of tags
    … is less than `<int>` or a `Link` header is provided. Otherwise, the response MUST
    include `<int>` results", starting "at the beginning of the list"."""
    await push_tags(registry, repo, TAGS)
    _, everything = await tags_list(registry, repo)
    reply, page = await tags_list(registry, repo, n="3")
    assert len(page) == 3 or (len(page) < 3 and next_link(reply) is not None), reply
    assert page == everything[: len(page)]


async def test_tags_list_with_n_zero_is_empty_without_a_link(registry: Registry, repo: str) -> None:
    """l.547 MUST: "When `n` is zero, this endpoint MUST return an empty list, and MUST NOT
    include a `Link` header"."""
    await push_tags(registry, repo, TAGS)
    reply, page = await tags_list(registry, repo, n="0")
    assert page == [], reply
    assert "Link" not in reply.headers, reply


async def test_tags_list_with_last_starts_after_that_tag(registry: Registry, repo: str) -> None:
    """l.556-558: "`<tagname>` will not be included in the results, but up to `<int>` tags
    *after* `<tagname>` will be returned"; l.560: with `last`, `n` is OPTIONAL."""
    await push_tags(registry, repo, TAGS)
    _, everything = await tags_list(registry, repo)
    reply, page = await tags_list(registry, repo, n="3", last=everything[1])
    assert page == everything[2:5] or (page == everything[2 : 2 + len(page)] and next_link(reply))
    _, rest = await tags_list(registry, repo, last=everything[4])
    assert rest == everything[5:]


async def test_tags_list_pages_cover_every_tag_once(registry: Registry, repo: str) -> None:
    """l.545-546, l.565: paging by `n`, following `Link: <…>; rel="next"` (RFC 5988) when given
    and `last` otherwise, yields each tag once, in order, no page over `n`."""
    await push_tags(registry, repo, TAGS)
    _, everything = await tags_list(registry, repo)
    seen: list[str] = []
    reply, page = await tags_list(registry, repo, n="3")
    for _ in range(len(TAGS) + 2):
        assert len(page) <= 3, reply
        seen += page
        link = next_link(reply)
        if link is None and len(page) < 3:
            break
        if link is not None:
            reply = await registry.request("GET", link)
            assert reply.status == 200, reply
            page = reply.json()["tags"]
        else:
            reply, page = await tags_list(registry, repo, n="3", last=seen[-1])
    assert seen == everything, seen


async def test_tags_list_of_an_unknown_repository_is_404_name_unknown(
    registry: Registry, repo: str
) -> None:
    """l.521 ("Assuming a repository is found"), end-8a failure `404`; code-9 `NAME_UNKNOWN`
    "repository name not known to registry"."""
    reply = await registry.request("GET", f"/v2/{repo}/tags/list")
    assert_error(reply, (404,), {"NAME_UNKNOWN"})


async def push_referrers(registry: Registry, repo: str) -> tuple[Manifest, list[dict[str, Any]]]:
    """A subject and three referrers (an artifact manifest, one typed by its config, an
    index), the first pushed before its subject; and the descriptors l.582-586 promise."""
    subject = random_image()
    annotation = "org.conformance.which"
    sbom = random_image(subject=subject.manifest, artifact_type=SBOM,
                        annotations={annotation: "sbom"})  # fmt: skip
    await push_image(registry, repo, sbom.manifest.digest, sbom)
    await push_image(registry, repo, "subject", subject)
    config, layer = Blob(random_config().data, SIGNATURE_CONFIG), Blob.random(64)
    signature = image_manifest(config, [layer], subject=subject.manifest,
                               annotations={annotation: "signature"})  # fmt: skip
    for blob in (config, layer):
        await push_blob(registry, repo, blob)
    index = image_index([sbom.manifest], subject=subject.manifest,
                        annotations={annotation: "index"})  # fmt: skip
    for manifest in (signature, index):
        reply = await push_manifest(registry, repo, manifest.digest, manifest)
        assert reply.status == 201, reply
    expected = [
        sbom.manifest.descriptor(artifactType=SBOM, annotations={annotation: "sbom"}),
        signature.descriptor(artifactType=SIGNATURE_CONFIG, annotations={annotation: "signature"}),
        index.descriptor(annotations={annotation: "index"}),
    ]
    return subject.manifest, expected


def referrers_index(reply: Reply) -> list[dict[str, Any]]:
    """l.576-581 MUST: 200, `Content-Type: application/vnd.oci.image.index.v1+json`, and "a
    JSON body with an image index containing a list of descriptors"."""
    assert reply.status == 200, reply
    assert reply.headers.get("Content-Type") == INDEX, reply
    body = reply.json()
    assert body.get("schemaVersion") == 2 and body.get("mediaType") == INDEX, reply
    manifests: list[dict[str, Any]] = body["manifests"]
    return manifests


def by_digest(descriptors: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {d["digest"]: d for d in descriptors}


async def test_referrers_list_is_an_image_index_of_the_subjects_referrers(
    endpoint: Endpoint, registry: Registry, repo: str
) -> None:
    """l.576-586 MUST: an image index of the manifests whose `subject` is the digest, each
    descriptor with `artifactType` (the manifest's, else its config's mediaType, omitted for
    an index without one) and the manifest's annotations."""
    require(endpoint, "referrers")
    subject, expected = await push_referrers(registry, repo)
    reply = await registry.request("GET", f"/v2/{repo}/referrers/{subject.digest}")
    found = by_digest(referrers_index(reply))
    assert set(found) == {d["digest"] for d in expected}, reply
    for want in expected:
        got = found[want["digest"]]
        for key in ("mediaType", "size", "artifactType"):
            assert got.get(key) == want.get(key), (key, got, want)
        assert want["annotations"].items() <= got.get("annotations", {}).items(), got


async def test_referrers_filtered_by_artifact_type_say_so_in_oci_filters_applied(
    endpoint: Endpoint, registry: Registry, repo: str
) -> None:
    """l.630-633: filtering on `artifactType` SHOULD be supported; "If filtering is requested
    and applied, the response MUST include a header `OCI-Filters-Applied: artifactType`".
    Applied: only that type; not applied (no header): the whole list."""
    require(endpoint, "referrers")
    subject, expected = await push_referrers(registry, repo)
    reply = await registry.request(
        "GET", f"/v2/{repo}/referrers/{subject.digest}", query={"artifactType": SBOM}
    )
    found = by_digest(referrers_index(reply))
    applied = [f.strip() for f in reply.headers.get("OCI-Filters-Applied", "").split(",")]
    wanted = [d for d in expected if "artifactType" in applied and d.get("artifactType") == SBOM]
    assert set(found) == {d["digest"] for d in (wanted or expected)}, reply


async def test_referrers_of_a_digest_without_referrers_is_an_empty_index(
    endpoint: Endpoint, registry: Registry, repo: str
) -> None:
    """l.577 MUST NOT: "the registry MUST NOT return a `404 Not Found` to a referrers API
    requests"; l.587 MUST: "an empty manifest list MUST be returned"."""
    require(endpoint, "referrers")
    await push_image(registry, repo, "v1", random_image())
    reply = await registry.request("GET", f"/v2/{repo}/referrers/{unknown_digest()}")
    assert referrers_index(reply) == []


async def test_referrers_of_an_invalid_digest_is_400(
    endpoint: Endpoint, registry: Registry, repo: str
) -> None:
    """l.578 MUST: "If the request is invalid, such as a `<digest>` with an invalid syntax, a
    `400 Bad Request` MUST be returned"."""
    require(endpoint, "referrers")
    await push_image(registry, repo, "v1", random_image())
    reply = await registry.request("GET", f"/v2/{repo}/referrers/sha256:not-a-digest")
    assert reply.status == 400, reply


async def test_manifest_put_with_a_subject_answers_oci_subject(
    endpoint: Endpoint, registry: Registry, repo: str
) -> None:
    """l.499 MUST: a registry supporting the referrers API "MUST respond with the response
    header `OCI-Subject: <subject digest>`" to a manifest PUT with a `subject`."""
    require(endpoint, "referrers")
    subject = random_image()
    referrer = random_image(subject=subject.manifest, artifact_type=SBOM)
    reply = await push_image(registry, repo, referrer.manifest.digest, referrer)
    assert reply.headers.get("OCI-Subject") == subject.manifest.digest, reply


async def test_registry_without_referrers_api_answers_404_there(
    endpoint: Endpoint, registry: Registry, repo: str
) -> None:
    """l.663, l.720: a client "receiving a `404 Not Found` MUST fallback to using an image
    index pushed to a tag described by the referrers tag schema": without the API, 404 is
    the answer that sends clients to the fallback."""
    refuse(endpoint, "referrers")
    image = random_image()
    await push_image(registry, repo, "v1", image)
    reply = await registry.request("GET", f"/v2/{repo}/referrers/{image.manifest.digest}")
    assert reply.status == 404, reply


async def test_registry_without_referrers_api_sends_no_oci_subject(
    endpoint: Endpoint, registry: Registry, repo: str
) -> None:
    """l.499-501: `OCI-Subject` tells the client the registry processed the `subject`; when
    it "was not set, the client MUST" maintain the referrers tag itself, so a registry
    without the API must not send it."""
    refuse(endpoint, "referrers")
    subject = random_image()
    referrer = random_image(subject=subject.manifest, artifact_type=SBOM)
    reply = await push_image(registry, repo, referrer.manifest.digest, referrer)
    assert "OCI-Subject" not in reply.headers, reply


async def test_referrers_tag_schema_index_round_trips(registry: Registry, repo: str) -> None:
    """l.722-733: the fallback list is an image index pushed to the tag `<alg>-<ref>` of the
    subject digest; the registry stores and serves it like any index (l.480 exact bytes)."""
    subject = random_image()
    referrer = random_image(subject=subject.manifest, artifact_type=SBOM)
    await push_image(registry, repo, "subject", subject)
    await push_image(registry, repo, referrer.manifest.digest, referrer)
    listing = image_index([referrer.manifest])
    tag = subject.manifest.digest.replace(":", "-")
    reply = await push_manifest(registry, repo, tag, listing)
    assert reply.status == 201, reply
    pulled = await get_manifest(registry, repo, tag)
    assert pulled.status == 200 and pulled.body == listing.data, pulled
    assert pulled.headers.get("Content-Type") == INDEX, pulled


async def test_catalog_lists_pushed_repositories_page_by_page(
    endpoint: Endpoint, registry: Registry, new_repo: Callable[[], str]
) -> None:
    """Not in OCI 1.1: Docker Registry HTTP API V2 "Listing Repositories": `/v2/_catalog?n=`
    answers `{"repositories": [...]}`, at most n a page, `Link: <…>; rel="next"` to the next."""
    require(endpoint, "catalog")
    pushed = [new_repo(), new_repo()]
    for repo in pushed:
        await push_image(registry, repo, "v1", random_image())
    seen: list[str] = []
    reply = await registry.request("GET", "/v2/_catalog", query={"n": "20"})
    for _ in range(500):
        assert reply.status == 200, reply
        page = reply.json()["repositories"]
        assert len(page) <= 20, reply
        seen += page
        link = next_link(reply)
        if link is None:
            break
        reply = await registry.request("GET", link)
    assert set(pushed) <= set(seen), seen
    assert len(seen) == len(set(seen)), seen
