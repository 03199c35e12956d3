"""OCI distribution-spec conformance, the Pull category: manifests and blobs by GET and HEAD,
404s, ranged blob reads. Citations are spec.md lines of v1.1.1 unless marked `main`
(opencontainers/distribution-spec@967efdc, after 1.1.1)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.conformance.client import Endpoint, Registry
from tests.conformance.content import (
    ACCEPT,
    Blob,
    assert_error,
    digest_of,
    error_codes,
    get_manifest,
    image_index,
    push_blob,
    push_image,
    push_manifest,
    random_image,
    require,
    unknown_digest,
)

pytestmark = pytest.mark.pull


async def test_v2_ping_answers_200(registry: Registry) -> None:
    """l.761 (Determining Support): "If the response is `200 OK`, then the registry
    implements this specification." (after authentication, when the target has any)"""
    reply = await registry.request("GET", "/v2/")
    assert reply.status == 200, reply


async def test_manifest_get_by_tag_is_200_with_the_pushed_bytes(
    registry: Registry, repo: str
) -> None:
    """l.153, l.176: `<reference>` MUST be a digest or a tag; "A GET request to an existing
    manifest URL MUST provide the expected manifest, with a response code that MUST be
    `200 OK`." """
    image = random_image()
    await push_image(registry, repo, "v1", image)
    reply = await get_manifest(registry, repo, "v1")
    assert reply.status == 200, reply
    assert reply.body == image.manifest.data


async def test_manifest_get_by_digest_is_200_with_the_pushed_bytes(
    registry: Registry, repo: str
) -> None:
    """l.153, l.176: the same by digest; l.183: clients verify the body against it."""
    image = random_image()
    await push_image(registry, repo, "v1", image)
    reply = await get_manifest(registry, repo, image.manifest.digest)
    assert reply.status == 200, reply
    assert digest_of(reply.body) == image.manifest.digest


async def test_manifest_get_names_its_digest_in_docker_content_digest(
    registry: Registry, repo: str
) -> None:
    """l.177 SHOULD (main l.171 MUST): "A successful response SHOULD contain the digest of
    the uploaded blob in the header `Docker-Content-Digest`"; l.182: it must match the body."""
    image = random_image()
    await push_image(registry, repo, "v1", image)
    for reference in ("v1", image.manifest.digest):
        reply = await get_manifest(registry, repo, reference)
        assert reply.status == 200, reply
        assert reply.headers.get("Docker-Content-Digest") == digest_of(reply.body), reply


@pytest.mark.parametrize("kind", ["image manifest", "image index"])
async def test_manifest_content_type_is_the_type_it_was_pushed_as(
    registry: Registry, repo: str, kind: str
) -> None:
    """l.170, l.172 SHOULD: "The `Content-Type` header SHOULD match what the client pushed as
    the manifest's `Content-Type`"; "The registry SHOULD NOT include parameters"."""
    image = random_image()
    await push_image(registry, repo, "image", image)
    pushed = image.manifest
    if kind == "image index":
        pushed = image_index([image.manifest])
        reply = await push_manifest(registry, repo, "index", pushed)
        assert reply.status == 201, reply
    for method in ("GET", "HEAD"):
        reply = await get_manifest(registry, repo, pushed.digest, method)
        assert reply.status == 200, reply
        assert reply.headers.get("Content-Type") == pushed.media_type, reply


async def test_manifest_head_is_200_with_digest_and_length(registry: Registry, repo: str) -> None:
    """l.212 MUST: "A HEAD request to an existing blob or manifest URL MUST return `200 OK`";
    l.213-214 SHOULD (main l.207-208 MUST): `Docker-Content-Digest` and `Content-Length`."""
    image = random_image()
    await push_image(registry, repo, "v1", image)
    for reference in ("v1", image.manifest.digest):
        reply = await get_manifest(registry, repo, reference, "HEAD")
        assert reply.status == 200, reply
        assert reply.body == b""
        assert reply.headers.get("Docker-Content-Digest") == image.manifest.digest, reply
        assert reply.headers.get("Content-Length") == str(len(image.manifest.data)), reply


@pytest.mark.parametrize("by", ["tag", "digest"])
async def test_unknown_manifest_is_404_manifest_unknown(
    registry: Registry, repo: str, by: str
) -> None:
    """l.185 MUST: "If the manifest is not found in the repository, the response code MUST
    be `404 Not Found`"; l.216 for HEAD; code-7 `MANIFEST_UNKNOWN` names the case."""
    await push_image(registry, repo, "present", random_image())
    reference = "absent" if by == "tag" else unknown_digest()
    assert_error(await get_manifest(registry, repo, reference), (404,), {"MANIFEST_UNKNOWN"})
    head = await get_manifest(registry, repo, reference, "HEAD")
    assert head.status == 404, head


async def test_manifest_in_an_unknown_repository_is_404(registry: Registry, repo: str) -> None:
    """l.491 MUST: "An attempt to pull a nonexistent repository MUST return response code
    `404 Not Found`" (code-9 `NAME_UNKNOWN`, or code-7 for the manifest)."""
    reply = await get_manifest(registry, repo, "latest")
    assert_error(reply, (404,), {"NAME_UNKNOWN", "MANIFEST_UNKNOWN"})


async def test_blob_get_is_200_with_the_bytes_and_their_digest(
    registry: Registry, repo: str
) -> None:
    """l.194 MUST: "A GET request to an existing blob URL MUST provide the expected blob, with
    a response code that MUST be `200 OK`"; l.195-196: `Docker-Content-Digest` SHOULD (main
    l.189 MUST) be sent and "MUST be a digest matching that of the response body"."""
    blob = Blob.random(4096)
    await push_blob(registry, repo, blob)
    reply = await registry.request("GET", f"/v2/{repo}/blobs/{blob.digest}")
    assert reply.status == 200, reply
    assert reply.body == blob.data
    assert reply.headers.get("Docker-Content-Digest") == blob.digest, reply


async def test_blob_head_is_200_with_length_and_digest(registry: Registry, repo: str) -> None:
    """l.212 MUST 200; l.213-214 SHOULD (main l.207-208 MUST): `Docker-Content-Digest` and
    "the size in bytes of the uploaded blob in the header `Content-Length`"."""
    blob = Blob.random(3000)
    await push_blob(registry, repo, blob)
    reply = await registry.request("HEAD", f"/v2/{repo}/blobs/{blob.digest}")
    assert reply.status == 200, reply
    assert reply.body == b""
    assert reply.headers.get("Content-Length") == "3000", reply
    assert reply.headers.get("Docker-Content-Digest") == blob.digest, reply


async def test_unknown_blob_is_404_blob_unknown(registry: Registry, repo: str) -> None:
    """l.200 MUST: "If the blob is not found in the repository, the response code MUST be
    `404 Not Found`"; l.216 for HEAD; code-1 `BLOB_UNKNOWN` names the case."""
    await push_blob(registry, repo, Blob.random(10))
    missing = unknown_digest()
    assert_error(
        await registry.request("GET", f"/v2/{repo}/blobs/{missing}"), (404,), {"BLOB_UNKNOWN"}
    )
    head = await registry.request("HEAD", f"/v2/{repo}/blobs/{missing}")
    assert head.status == 404, head


async def test_blob_of_another_repository_is_404_here(
    registry: Registry, repo: str, new_repo: Callable[[], str]
) -> None:
    """l.192, l.200: a blob is pulled from "the repository"; one pushed to another repository
    of the registry is not found in this one (404), or content would leak between them."""
    other = new_repo()
    blob = Blob.random(100)
    await push_blob(registry, other, blob)
    await push_blob(registry, repo, Blob.random(100))
    reply = await registry.request("GET", f"/v2/{repo}/blobs/{blob.digest}")
    assert_error(reply, (404,), {"BLOB_UNKNOWN"})


async def test_blob_in_an_unknown_repository_is_404(registry: Registry, repo: str) -> None:
    """l.200 MUST 404 (code-1 `BLOB_UNKNOWN` or code-9 `NAME_UNKNOWN`)."""
    reply = await registry.request("GET", f"/v2/{repo}/blobs/{unknown_digest()}")
    assert_error(reply, (404,), {"BLOB_UNKNOWN", "NAME_UNKNOWN"})


async def test_manifest_reference_in_no_valid_format_is_refused_with_a_spec_error(
    registry: Registry, repo: str
) -> None:
    """l.154: "The `<reference>` MUST NOT be in any other format"; l.788-808: a JSON error
    body MUST be `{"errors": [{"code": …}]}` with a code from the table. 400 or 404 as the
    official conformance suite accepts."""
    await push_image(registry, repo, "v1", random_image())
    reply = await registry.request(
        "GET", f"/v2/{repo}/manifests/sha256:totallywrong", headers=ACCEPT
    )
    assert reply.status in (400, 404), reply
    error_codes(reply)  # the shape and the codes, when JSON


@pytest.mark.parametrize(
    ("ranged", "first", "last"),
    [("bytes=100-199", 100, 199), ("bytes=1000-", 1000, 1023), ("bytes=-24", 1000, 1023)],
)
async def test_blob_range_get_is_206_with_that_slice(
    endpoint: Endpoint, registry: Registry, repo: str, ranged: str, first: int, last: int
) -> None:
    """l.202 SHOULD: "A registry SHOULD support the `Range` request header in accordance with
    RFC 9110": 206 Partial Content, `Content-Range: bytes first-last/size`, that slice."""
    require(endpoint, "range")
    blob = Blob.random(1024)
    await push_blob(registry, repo, blob)
    reply = await registry.request(
        "GET", f"/v2/{repo}/blobs/{blob.digest}", headers={"Range": ranged}
    )
    assert reply.status == 206, reply
    assert reply.headers.get("Content-Range") == f"bytes {first}-{last}/1024", reply
    assert reply.body == blob.data[first : last + 1]


async def test_blob_range_beyond_its_end_is_416(
    endpoint: Endpoint, registry: Registry, repo: str
) -> None:
    """l.202 SHOULD, "in accordance with RFC 9110": a Range no byte of the blob satisfies is
    answered 416 (§15.5.17) with `Content-Range: bytes */size` (§14.4), and the answer is
    framed right: its Content-Length is its body's (§8.6)."""
    require(endpoint, "range")
    blob = Blob.random(1024)
    await push_blob(registry, repo, blob)
    reply = await registry.request(
        "GET", f"/v2/{repo}/blobs/{blob.digest}", headers={"Range": "bytes=5000-10000"}
    )
    assert reply.status == 416, reply
    assert reply.headers.get("Content-Range") == "bytes */1024", reply
    assert reply.broken is None, reply.broken
