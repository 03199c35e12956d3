"""OCI distribution-spec conformance, the Content Management category: DELETE of manifests by
digest, of tags and of blobs (202, then 404), or the 400/405 of a registry that disables
them. Citations are spec.md lines of v1.1.1."""

from __future__ import annotations

import pytest

from tests.conformance.client import Endpoint, Registry
from tests.conformance.content import (
    Blob,
    assert_error,
    get_manifest,
    push_blob,
    push_image,
    push_manifest,
    random_image,
    refuse,
    require,
    unknown_digest,
)

pytestmark = pytest.mark.management


async def test_manifest_delete_by_digest_is_202_then_404_by_digest_and_tag(
    endpoint: Endpoint, registry: Registry, repo: str
) -> None:
    """l.688 MUST: "Upon success, the registry MUST respond with a `202 Accepted` code";
    l.692: "Once deleted, a `GET` to `/v2/<name>/manifests/<digest>` and any tag pointing to
    that digest will return a 404"."""
    require(endpoint, "delete")
    image = random_image()
    await push_image(registry, repo, "v1", image)
    reply = await registry.request("DELETE", f"/v2/{repo}/manifests/{image.manifest.digest}")
    assert reply.status == 202, reply
    for reference in (image.manifest.digest, "v1"):
        assert_error(await get_manifest(registry, repo, reference), (404,), {"MANIFEST_UNKNOWN"})


async def test_manifest_delete_leaves_other_manifests_of_the_repository(
    endpoint: Endpoint, registry: Registry, repo: str
) -> None:
    """l.685-692: the DELETE names one manifest by digest; the repository's others stay."""
    require(endpoint, "delete")
    gone, kept = random_image(), random_image()
    await push_image(registry, repo, "gone", gone)
    await push_image(registry, repo, "kept", kept)
    reply = await registry.request("DELETE", f"/v2/{repo}/manifests/{gone.manifest.digest}")
    assert reply.status == 202, reply
    pulled = await get_manifest(registry, repo, "kept")
    assert pulled.status == 200 and pulled.body == kept.manifest.data, pulled


async def test_manifest_delete_in_an_unknown_repository_is_404(
    endpoint: Endpoint, registry: Registry, repo: str
) -> None:
    """l.689 MUST: "If the repository does not exist, the response MUST return `404 Not
    Found`"."""
    require(endpoint, "delete")
    reply = await registry.request("DELETE", f"/v2/{repo}/manifests/{unknown_digest()}")
    assert_error(reply, (404,), {"NAME_UNKNOWN", "MANIFEST_UNKNOWN"})


async def test_disabled_manifest_delete_is_400_or_405(
    endpoint: Endpoint, registry: Registry, repo: str
) -> None:
    """l.690 MUST: "If manifest deletion is disabled, the registry MUST respond with either a
    `400 Bad Request` or a `405 Method Not Allowed`"; the manifest stays."""
    refuse(endpoint, "delete")
    image = random_image()
    await push_image(registry, repo, "v1", image)
    reply = await registry.request("DELETE", f"/v2/{repo}/manifests/{image.manifest.digest}")
    assert reply.status in (400, 405), reply
    assert (await get_manifest(registry, repo, image.manifest.digest)).status == 200


async def test_tag_delete_is_202_then_404_and_the_manifest_stays(
    endpoint: Endpoint, registry: Registry, repo: str
) -> None:
    """l.678 MUST: "Upon success, the registry MUST respond with a `202 Accepted` code";
    l.681: "Once deleted, a `GET` to `/v2/<name>/manifests/<tag>` will return a 404"; the
    manifest, by digest and by its other tag, is not deleted with the tag."""
    require(endpoint, "tag_delete")
    image = random_image()
    await push_image(registry, repo, "gone", image)
    assert (await push_manifest(registry, repo, "kept", image.manifest)).status == 201
    reply = await registry.request("DELETE", f"/v2/{repo}/manifests/gone")
    assert reply.status == 202, reply
    assert_error(await get_manifest(registry, repo, "gone"), (404,), {"MANIFEST_UNKNOWN"})
    for reference in ("kept", image.manifest.digest):
        assert (await get_manifest(registry, repo, reference)).status == 200


async def test_disabled_tag_delete_is_400_or_405(
    endpoint: Endpoint, registry: Registry, repo: str
) -> None:
    """l.679 MUST: "If tag deletion is disabled, the registry MUST respond with either a
    `400 Bad Request` or a `405 Method Not Allowed`"; the tag stays."""
    refuse(endpoint, "tag_delete")
    await push_image(registry, repo, "v1", random_image())
    reply = await registry.request("DELETE", f"/v2/{repo}/manifests/v1")
    assert reply.status in (400, 405), reply
    assert (await get_manifest(registry, repo, "v1")).status == 200


async def test_blob_delete_is_202_then_404(
    endpoint: Endpoint, registry: Registry, repo: str
) -> None:
    """l.708 MUST: "Upon success, the registry MUST respond with code `202 Accepted`"; then
    the blob is not found (l.200 MUST 404, code-1 `BLOB_UNKNOWN`)."""
    require(endpoint, "blob_delete")
    blob = Blob.random(256)
    await push_blob(registry, repo, blob)
    reply = await registry.request("DELETE", f"/v2/{repo}/blobs/{blob.digest}")
    assert reply.status == 202, reply
    gone = await registry.request("GET", f"/v2/{repo}/blobs/{blob.digest}")
    assert_error(gone, (404,), {"BLOB_UNKNOWN"})
    assert (await registry.request("HEAD", f"/v2/{repo}/blobs/{blob.digest}")).status == 404


async def test_blob_delete_of_an_unknown_blob_is_404(
    endpoint: Endpoint, registry: Registry, repo: str
) -> None:
    """l.709 MUST: "If the blob is not found, a `404 Not Found` code MUST be returned"."""
    require(endpoint, "blob_delete")
    await push_blob(registry, repo, Blob.random(10))
    reply = await registry.request("DELETE", f"/v2/{repo}/blobs/{unknown_digest()}")
    assert_error(reply, (404,), {"BLOB_UNKNOWN"})


async def test_disabled_blob_delete_is_400_or_405(
    endpoint: Endpoint, registry: Registry, repo: str
) -> None:
    """l.710 MUST: "If blob deletion is disabled, the registry MUST respond with either a
    `400 Bad Request` or a `405 Method Not Allowed`"; the blob stays."""
    refuse(endpoint, "blob_delete")
    blob = Blob.random(256)
    await push_blob(registry, repo, blob)
    reply = await registry.request("DELETE", f"/v2/{repo}/blobs/{blob.digest}")
    assert reply.status in (400, 405), reply
    assert (await registry.request("HEAD", f"/v2/{repo}/blobs/{blob.digest}")).status == 200


async def test_tags_list_after_the_last_tag_is_deleted_is_empty_or_404(
    endpoint: Endpoint, registry: Registry, repo: str
) -> None:
    """l.522, l.525-535: after its only manifest is deleted the repository either is gone
    (404 `NAME_UNKNOWN`, end-8a) or lists no tags: "The list of tags MAY be empty", and
    the body is still `{"name": …, "tags": [...]}` — a list."""
    require(endpoint, "delete")
    image = random_image()
    await push_image(registry, repo, "v1", image)
    reply = await registry.request("DELETE", f"/v2/{repo}/manifests/{image.manifest.digest}")
    assert reply.status == 202, reply
    listed = await registry.request("GET", f"/v2/{repo}/tags/list")
    if listed.status == 404:
        assert_error(listed, (404,), {"NAME_UNKNOWN"})
        return
    assert listed.status == 200, listed
    assert listed.json() == {"name": repo, "tags": []}, listed
