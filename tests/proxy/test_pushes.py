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
         Step("manifest", "org/app", media_type=OCI_MANIFEST)),
        ("PUT", f"/v2/org/app/manifests/{D}", {}, {}, Step("manifest", "org/app", digest=D)),
        ("POST", "/v2/org/app/blobs/uploads/", {"mount": str(D), "from": "x/y"}, {}, None),
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
    assert uploads.session(HOST, "org/app", "u-1") is None


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
