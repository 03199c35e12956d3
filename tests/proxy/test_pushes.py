"""Which step of a push a request is, and an upload's steps kept (or not) as upstream
answers them: POST, PATCHes, PUT; monolithic; cancelled; out of order; a manifest."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from appliance.cache.access import AccessGate
from appliance.cache.service import RegistryCache
from appliance.cache.uploads import Uploads
from appliance.oci.digest import Digest
from appliance.oci.mediatypes import OCI_MANIFEST
from appliance.proxy.loops import Bridge
from appliance.proxy.pushes import Pushes, Step, push_step
from appliance.store.files import FileBlobStore
from appliance.store.index import SqliteIndex
from tests.cache.fakes import FakeUpstream

D = Digest.of(b"x")
HOST = "ghcr.io"
LOCATION = {"Location": f"https://{HOST}/v2/org/app/blobs/uploads/u-1?_state=abc"}


@pytest.mark.parametrize(
    ("method", "path", "query", "headers", "step"),
    [
        ("POST", "/v2/org/app/blobs/uploads/", {}, {}, Step("start", "org/app")),
        ("POST", "/v2/org/app/blobs/uploads/", {"digest": str(D)}, {},
         Step("start", "org/app", digest=D)),
        ("PATCH", "/v2/org/app/blobs/uploads/u-1", {}, {}, Step("continue", "org/app", "u-1")),
        ("PATCH", "/v2/org/app/blobs/uploads/u-1", {}, {"Content-Range": "10-19"},
         Step("continue", "org/app", "u-1", offset=10)),
        ("PUT", "/v2/org/app/blobs/uploads/u-1", {"digest": str(D)}, {},
         Step("finish", "org/app", "u-1", D)),
        ("DELETE", "/v2/org/app/blobs/uploads/u-1", {}, {}, Step("cancel", "org/app", "u-1")),
        ("PUT", "/v2/org/app/manifests/v1", {}, {"Content-Type": f"{OCI_MANIFEST}; x=1"},
         Step("manifest", "org/app", media_type=OCI_MANIFEST, tag="v1")),
        ("PUT", f"/v2/org/app/manifests/{D}", {}, {}, Step("manifest", "org/app", digest=D)),
        ("POST", "/v2/org/app/blobs/uploads/", {"mount": str(D), "from": "x/y"}, {},
         Step("start", "org/app")),  # answered 202, a mount becomes an upload
        ("GET", "/v2/org/app/blobs/uploads/u-1", {}, {}, None),  # upload status: a read
        ("PUT", "/v2/org/app/blobs/uploads/u-1", {"digest": "sha256:nope"}, {}, None),
        ("PUT", "/v2/Bad Name/manifests/v1", {}, {}, None),
    ],
)  # fmt: skip
def test_each_request_is_the_step_of_a_push_it_is(
    method: str, path: str, query: dict[str, str], headers: dict[str, str], step: Step | None
) -> None:
    assert push_step(method, path, query, headers) == step


@pytest.fixture
async def pushes(tmp_path: Path) -> AsyncIterator[tuple[Pushes, FileBlobStore, Uploads]]:
    files = FileBlobStore(tmp_path)
    files.prepare()
    index = await SqliteIndex.open(tmp_path / "index.sqlite")
    upstream = FakeUpstream()
    cache = RegistryCache(files, index, upstream, AccessGate(upstream))  # type: ignore[arg-type]
    yield Pushes(cache.uploads, Bridge(None)), files, cache.uploads
    await index.close()


async def body(*pieces: bytes) -> AsyncIterator[bytes]:
    for piece in pieces:
        yield piece


async def step(p: Pushes, s: Step, status: int, headers: dict[str, str], *pieces: bytes) -> None:
    keeping = await p.begin(s, HOST)
    assert [c async for c in keeping.wrap()(body(*pieces))] == list(pieces)
    await p.answered(keeping, status, headers, "Bearer alice")


async def test_post_patches_put_keep_the_blob_when_upstream_accepts_it(
    pushes: tuple[Pushes, FileBlobStore, Uploads],
) -> None:
    p, files, uploads = pushes
    data = [os.urandom(1000), os.urandom(2000), b"last"]
    digest = Digest.of(b"".join(data))
    await step(p, Step("start", "org/app"), 202, LOCATION)
    await step(p, Step("continue", "org/app", "u-1"), 202, LOCATION, data[0])
    await step(p, Step("continue", "org/app", "u-1", offset=1000), 202, LOCATION, data[1])
    await step(p, Step("finish", "org/app", "u-1", digest), 201, {}, data[2])
    assert files.path_for(digest).read_bytes() == b"".join(data) and uploads.kept == 1
    assert uploads.claim((HOST, "org/app", "u-1")) is None


async def test_a_monolithic_post_is_kept_too(pushes: tuple[Pushes, FileBlobStore, Uploads]) -> None:
    p, files, _ = pushes
    await step(p, Step("start", "org/app", digest=Digest.of(b"whole")), 201, {}, b"whole")
    assert files.size_of(Digest.of(b"whole")) == 5


@pytest.mark.parametrize("how", ["refused", "out of order", "cancelled", "no answer"])
async def test_an_upload_that_goes_wrong_keeps_nothing(
    pushes: tuple[Pushes, FileBlobStore, Uploads], tmp_path: Path, how: str
) -> None:
    p, files, uploads = pushes
    digest = Digest.of(b"abcd")
    await step(p, Step("start", "org/app"), 202, LOCATION)
    if how == "refused":
        await step(p, Step("continue", "org/app", "u-1"), 416, {}, b"ab")
    elif how == "out of order":
        await step(p, Step("continue", "org/app", "u-1", offset=2), 202, LOCATION, b"ab")
    elif how == "cancelled":
        await step(p, Step("cancel", "org/app", "u-1"), 204, {})
    else:
        keeping = await p.begin(Step("continue", "org/app", "u-1"), HOST)
        await p.answered(keeping, 0, {}, None)
    await step(p, Step("finish", "org/app", "u-1", digest), 201, {}, b"cd")
    assert files.size_of(digest) is None and uploads.kept == 0
    assert list((tmp_path / "tmp").iterdir()) == []


async def test_a_manifest_put_upstream_accepts_is_stored(
    pushes: tuple[Pushes, FileBlobStore, Uploads],
) -> None:
    p, files, _ = pushes
    manifest = b'{"schemaVersion": 2, "mediaType": "' + OCI_MANIFEST.encode() + b'", "layers": []}'
    digest = Digest.of(manifest)
    await step(p, Step("manifest", "org/app", media_type=OCI_MANIFEST), 400, {}, manifest)
    assert files.size_of(digest) is None  # refused upstream: nothing
    accepted = {"Docker-Content-Digest": str(digest)}
    await step(p, Step("manifest", "org/app", media_type=OCI_MANIFEST), 201, accepted, manifest)
    assert files.path_for(digest).read_bytes() == manifest


async def test_a_step_racing_another_on_the_same_upload_keeps_nothing(
    pushes: tuple[Pushes, FileBlobStore, Uploads], tmp_path: Path
) -> None:
    """A PATCH arriving while the closing PUT of the same upload is in flight (a client
    trying to slip bytes in): it feeds nothing, and the blob is not kept."""
    p, files, uploads = pushes
    data = os.urandom(1000)
    digest = Digest.of(data)
    await step(p, Step("start", "org/app"), 202, LOCATION)
    put = await p.begin(Step("finish", "org/app", "u-1", digest), HOST)  # owns the upload
    racer = await p.begin(Step("continue", "org/app", "u-1"), HOST)
    assert racer.upload is None  # fed nothing
    assert [c async for c in racer.wrap()(body(b"junk"))] == [b"junk"]  # still passes
    assert [c async for c in put.wrap()(body(data))] == [data]
    await p.answered(racer, 202, LOCATION, None)
    await p.answered(put, 201, {}, "Bearer alice")
    assert files.size_of(digest) is None and uploads.kept == 0
    assert list((tmp_path / "tmp").iterdir()) == []


async def test_a_stored_blob_is_never_replaced_by_a_push(
    pushes: tuple[Pushes, FileBlobStore, Uploads],
) -> None:
    p, files, uploads = pushes
    await step(p, Step("start", "org/app", digest=Digest.of(b"same")), 201, {}, b"same")
    stored = files.path_for(Digest.of(b"same"))
    inode = stored.stat().st_ino
    await step(p, Step("start", "org/other", digest=Digest.of(b"same")), 201, {}, b"same")
    assert stored.stat().st_ino == inode and uploads.kept == 1  # granted, not rewritten


async def test_a_mount_upstream_answers_with_an_upload_becomes_one(
    pushes: tuple[Pushes, FileBlobStore, Uploads],
) -> None:
    p, files, _ = pushes
    await step(p, Step("start", "org/app"), 202, LOCATION)  # the mount's fallback
    await step(p, Step("finish", "org/app", "u-1", Digest.of(b"fallback")), 201, {}, b"fallback")
    assert files.size_of(Digest.of(b"fallback")) == 8


async def test_a_monolithic_post_upstream_answers_202_is_kept_from_the_put(
    pushes: tuple[Pushes, FileBlobStore, Uploads],
) -> None:
    p, files, _ = pushes
    digest = Digest.of(b"whole body")
    await step(p, Step("start", "org/app", digest=digest), 202, LOCATION, b"whole body")
    await step(p, Step("finish", "org/app", "u-1", digest), 201, {}, b"whole body")
    assert files.size_of(digest) == 10


async def test_a_manifest_accepted_without_a_digest_header_is_kept_by_its_bytes(
    pushes: tuple[Pushes, FileBlobStore, Uploads],
) -> None:
    p, files, _ = pushes
    manifest = b'{"schemaVersion": 2, "mediaType": "' + OCI_MANIFEST.encode() + b'", "layers": []}'
    await step(p, Step("manifest", "org/app", media_type=OCI_MANIFEST), 201, {}, manifest)
    assert files.path_for(Digest.of(manifest)).read_bytes() == manifest
