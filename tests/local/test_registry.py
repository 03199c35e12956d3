"""The local registry's operations over a real index and store: manifests checked before
they are kept (digest, type, references, size), subjects recorded for the referrers API,
everything local kept whatever the size bound says, deletes by tag and by digest, and the
catalog paged."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from appliance.local.ports import LocalError
from appliance.local.registry import MAX_MANIFEST_BYTES, LocalRegistry
from appliance.local.uploads import LocalUploads
from appliance.oci.digest import Digest
from appliance.oci.mediatypes import DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST
from appliance.store.eviction import plan
from appliance.store.files import FileBlobStore
from appliance.store.index import SqliteIndex

NAME = "registry.build.internal"
CONFIG_TYPE = "application/vnd.oci.image.config.v1+json"
LAYER_TYPE = "application/vnd.oci.image.layer.v1.tar"


@dataclass
class Rig:
    root: Path
    files: FileBlobStore
    index: SqliteIndex
    registry: LocalRegistry


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    files = FileBlobStore(tmp_path)
    files.prepare()
    index = await SqliteIndex.open(tmp_path / "index.sqlite")
    uploads = LocalUploads(files, purge_after_s=3600.0, max_sessions=16)
    yield Rig(tmp_path, files, index, LocalRegistry(index, files, uploads, NAME))
    await index.close()


async def chunks(*pieces: bytes) -> AsyncIterator[bytes]:
    for piece in pieces:
        yield piece


async def push_blob(rig: Rig, repository: str, data: bytes) -> Digest:
    digest = Digest.of(data)
    reply = await rig.registry.start_upload(repository, digest, chunks(data))
    assert reply.status == 201 and reply.headers["Docker-Content-Digest"] == str(digest)
    return digest


def descriptor(digest: Digest, media_type: str, size: int = 1, **extra: Any) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": str(digest), "size": size, **extra}


def image(config: Digest, layers: list[Digest], **extra: Any) -> bytes:
    return json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": descriptor(config, CONFIG_TYPE),
        "layers": [descriptor(d, LAYER_TYPE) for d in layers], **extra,
    }).encode()  # fmt: skip


def index_of(*children: Digest, **extra: Any) -> bytes:
    return json.dumps({
        "schemaVersion": 2, "mediaType": OCI_INDEX,
        "manifests": [descriptor(c, OCI_MANIFEST) for c in children], **extra,
    }).encode()  # fmt: skip


async def push_image(rig: Rig, repository: str, tag: str, seed: bytes = b"") -> Digest:
    config = await push_blob(rig, repository, b"{}")
    layer = await push_blob(rig, repository, b"layer of " + repository.encode() + seed)
    body = image(config, [layer])
    reply = await rig.registry.put_manifest(repository, tag, OCI_MANIFEST, body)
    assert reply.status == 201
    return Digest.of(body)


async def refused(call: Any) -> LocalError:
    with pytest.raises(LocalError) as caught:
        await call
    return caught.value


async def test_a_pushed_manifest_is_read_back_by_tag_and_digest(rig: Rig) -> None:
    digest = await push_image(rig, "team/app", "v1")
    for reference in ("v1", digest):
        stored = await rig.registry.manifest("team/app", reference)
        assert (stored.digest, stored.media_type) == (digest, OCI_MANIFEST)
        assert Digest.of(stored.path.read_bytes()) == digest and stored.size > 0
    layer = await rig.registry.blob("team/app", Digest.of(b"layer of team/app"))
    assert layer.path.read_bytes() == b"layer of team/app"
    for call in (rig.registry.manifest("team/app", "v2"), rig.registry.manifest("other", "v1")):
        assert (await refused(call)).code == "MANIFEST_UNKNOWN"
    assert (await refused(rig.registry.blob("other", layer.digest))).code == "BLOB_UNKNOWN"


async def test_a_manifest_put_by_a_digest_it_does_not_hash_to_is_refused(rig: Rig) -> None:
    config = await push_blob(rig, "app", b"{}")
    body = image(config, [])
    e = await refused(rig.registry.put_manifest("app", Digest.of(b"else"), OCI_MANIFEST, body))
    assert (e.status, e.code) == (400, "DIGEST_INVALID")
    assert await rig.index.local_manifest("app", Digest.of(body)) is None
    reply = await rig.registry.put_manifest("app", Digest.of(body), OCI_MANIFEST, body)
    assert reply.status == 201
    assert reply.headers["Location"] == f"/v2/app/manifests/{Digest.of(body)}"
    assert await rig.index.local_tags("app") == []  # put by digest: no tag


async def test_a_content_type_the_media_type_field_contradicts_is_refused(rig: Rig) -> None:
    config = await push_blob(rig, "app", b"{}")
    body = image(config, [])
    e = await refused(rig.registry.put_manifest("app", "v1", DOCKER_MANIFEST, body))
    assert (e.status, e.code) == (400, "MANIFEST_INVALID") and DOCKER_MANIFEST in str(e)
    # No useful Content-Type: the document's own mediaType is the type.
    await rig.registry.put_manifest("app", "v1", "application/json; charset=utf-8", body)
    assert (await rig.registry.manifest("app", "v1")).media_type == OCI_MANIFEST


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"not json", OCI_MANIFEST),
        (b"[1, 2]", OCI_MANIFEST),
        (b'{"schemaVersion": 2}', ""),  # no type to be had at all
        (b'{"schemaVersion": 2}', "text/plain"),
    ],
)
async def test_a_body_that_is_no_manifest_is_refused(
    rig: Rig, body: bytes, content_type: str
) -> None:
    e = await refused(rig.registry.put_manifest("app", "v1", content_type, body))
    assert (e.status, e.code) == (400, "MANIFEST_INVALID")
    assert await rig.index.local_tags("app") is None


async def test_an_index_naming_a_manifest_not_in_its_repository_is_refused(rig: Rig) -> None:
    child = await push_image(rig, "elsewhere", "v1")  # another repository's only
    e = await refused(rig.registry.put_manifest("app", "v1", OCI_INDEX, index_of(child)))
    assert (e.status, e.code) == (400, "MANIFEST_BLOB_UNKNOWN") and str(child) in str(e)
    # Its bytes pushed as a blob are no manifest either.
    await push_blob(rig, "app", (await rig.registry.manifest("elsewhere", child)).path.read_bytes())
    e = await refused(rig.registry.put_manifest("app", "v1", OCI_INDEX, index_of(child)))
    assert e.code == "MANIFEST_BLOB_UNKNOWN"
    mine = await push_image(rig, "app", "amd64")
    reply = await rig.registry.put_manifest("app", "v1", OCI_INDEX, index_of(mine))
    assert reply.status == 201
    assert (await rig.registry.manifest("app", "v1")).media_type == OCI_INDEX


async def test_a_manifest_naming_a_layer_not_pushed_is_refused(rig: Rig) -> None:
    config = await push_blob(rig, "app", b"{}")
    missing = Digest.of(b"never pushed")
    e = await refused(
        rig.registry.put_manifest("app", "v1", OCI_MANIFEST, image(config, [missing]))
    )
    assert (e.status, e.code) == (400, "MANIFEST_BLOB_UNKNOWN") and "layers" in str(e)
    e = await refused(rig.registry.put_manifest("app", "v1", OCI_MANIFEST, image(missing, [])))
    assert e.code == "MANIFEST_BLOB_UNKNOWN" and "config" in str(e)


async def test_foreign_layers_with_urls_need_not_be_pushed(rig: Rig) -> None:
    config = await push_blob(rig, "app", b"{}")
    foreign = Digest.of(b"a windows base layer")
    doc = json.loads(image(config, []))
    doc["layers"] = [descriptor(foreign, "application/vnd.docker.image.rootfs.foreign.diff.tar",
                                urls=["https://example.invalid/layer"])]  # fmt: skip
    body = json.dumps(doc).encode()
    assert (await rig.registry.put_manifest("app", "v1", OCI_MANIFEST, body)).status == 201
    assert str(foreign) not in await rig.index.pinned_digests()  # not ours to keep


async def test_an_index_with_layers_is_refused(rig: Rig) -> None:
    child = await push_image(rig, "app", "amd64")
    body = index_of(child, layers=[])
    e = await refused(rig.registry.put_manifest("app", "v1", OCI_INDEX, body))
    assert (e.status, e.code) == (400, "MANIFEST_INVALID")


async def test_a_subject_is_recorded_and_answered_as_oci_subject(rig: Rig) -> None:
    subject = await push_image(rig, "app", "v1")
    config = await push_blob(rig, "app", b"{}")
    unsigned = Digest.of(b"not pushed: a subject need not exist")
    for target, kind in ((subject, "application/example.sig"), (unsigned, None)):
        extra: dict[str, Any] = {"subject": descriptor(target, OCI_MANIFEST)}
        if kind:
            extra["artifactType"] = kind
        body = image(config, [], **extra)
        reply = await rig.registry.put_manifest("app", Digest.of(body), OCI_MANIFEST, body)
        assert reply.headers["OCI-Subject"] == str(target)
    found = json.loads((await rig.registry.referrers("app", subject, None)).body)
    assert [m["artifactType"] for m in found["manifests"]] == ["application/example.sig"]
    found = json.loads((await rig.registry.referrers("app", unsigned, None)).body)
    assert [m["artifactType"] for m in found["manifests"]] == [CONFIG_TYPE]  # the config's
    plain = await rig.registry.put_manifest("app", "v2", OCI_MANIFEST, image(config, []))
    assert "OCI-Subject" not in plain.headers


async def test_a_manifest_over_4_mib_is_refused_before_anything_else(rig: Rig) -> None:
    body = b" " * (MAX_MANIFEST_BYTES + 1)
    e = await refused(rig.registry.put_manifest("app", Digest.of(b"x"), OCI_MANIFEST, body))
    assert (e.status, e.code) == (413, "SIZE_INVALID")
    config = await push_blob(rig, "app", b"{}")
    doc = image(config, [])
    head, tail = doc[:-1] + b', "annotations": {"pad": "', b'"}}'
    fits = head + b"x" * (MAX_MANIFEST_BYTES - len(head) - len(tail)) + tail
    assert len(fits) == MAX_MANIFEST_BYTES and json.loads(fits)
    assert (await rig.registry.put_manifest("app", "big", OCI_MANIFEST, fits)).status == 201


async def test_local_manifests_and_blobs_are_never_chosen_for_eviction(rig: Rig) -> None:
    top = await push_image(rig, "app", "amd64")
    index = index_of(top)
    await rig.registry.put_manifest("app", "v1", OCI_INDEX, index)
    lone = await push_blob(rig, "loose", b"a blob no manifest names")
    cached = Digest.of(b"a cached blob")
    await rig.index.add_blob(cached, 13, None)
    pinned = await rig.index.pinned_digests()
    local = {top, Digest.of(index), Digest.of(b"{}"), Digest.of(b"layer of app"), lone}
    assert {str(d) for d in local} <= pinned and str(cached) not in pinned
    chosen = {d for d, _ in plan(await rig.index.snapshot(), need=1 << 40, busy=set())}
    assert chosen == {str(cached)}


async def test_deleting_by_tag_keeps_the_manifest_and_by_digest_removes_it_and_its_tags(
    rig: Rig,
) -> None:
    digest = await push_image(rig, "app", "v1")
    body = (await rig.registry.manifest("app", digest)).path.read_bytes()
    await rig.registry.put_manifest("app", "latest", OCI_MANIFEST, body)
    assert (await rig.registry.delete_manifest("app", "latest")).status == 202
    assert (await refused(rig.registry.delete_manifest("app", "latest"))).code == "MANIFEST_UNKNOWN"
    assert (await rig.registry.manifest("app", "v1")).digest == digest
    assert (await rig.registry.delete_manifest("app", digest)).status == 202
    for reference in ("v1", digest):
        assert (await refused(rig.registry.manifest("app", reference))).status == 404
    assert await rig.index.local_tags("app") == []  # its blobs are still there
    assert (await refused(rig.registry.delete_manifest("app", digest))).code == "MANIFEST_UNKNOWN"
    assert str(digest) not in await rig.index.pinned_digests()


async def test_a_deleted_blob_is_gone_from_its_repository_only(rig: Rig) -> None:
    digest = await push_blob(rig, "a", b"shared")
    await push_blob(rig, "b", b"shared")
    assert (await rig.registry.delete_blob("a", digest)).status == 202
    assert (await refused(rig.registry.blob("a", digest))).code == "BLOB_UNKNOWN"
    assert (await rig.registry.blob("b", digest)).size == 6
    e = await refused(rig.registry.delete_blob("a", digest))
    assert (e.status, e.code) == (404, "BLOB_UNKNOWN")


async def test_a_blob_whose_file_is_gone_is_unknown(rig: Rig) -> None:
    digest = await push_blob(rig, "a", b"removed under it")
    rig.files.path_for(digest).unlink()
    assert (await refused(rig.registry.blob("a", digest))).status == 404


async def test_the_catalog_pages_with_a_link_to_the_next_page(rig: Rig) -> None:
    for repository in ("c/x", "a", "b"):
        await push_blob(rig, repository, repository.encode())
    names = await rig.registry.repositories()
    assert names == ["a", "b", "c/x"]
    first = await rig.registry.catalog(names, 2, None)
    assert json.loads(first.body) == {"repositories": ["a", "b"]}
    assert first.headers["Link"] == '</v2/_catalog?n=2&last=b>; rel="next"'
    rest = await rig.registry.catalog(names, 2, "b")
    assert json.loads(rest.body) == {"repositories": ["c/x"]} and "Link" not in rest.headers
    whole = await rig.registry.catalog(names, None, None)
    assert json.loads(whole.body)["repositories"] == names and whole.headers == {}


async def test_a_mount_from_a_repository_without_the_blob_starts_an_upload(rig: Rig) -> None:
    digest = await push_blob(rig, "a", b"mounted")
    reply = await rig.registry.start_upload("b", None, None, mount=(digest, "a"))
    assert reply.status == 201 and await rig.index.local_blob("b", digest) == 7
    reply = await rig.registry.start_upload("c", None, None, mount=(digest, "nowhere"))
    assert reply.status == 202 and reply.headers["Docker-Upload-UUID"]
    assert await rig.index.local_blob("c", digest) is None


async def failing(data: bytes) -> AsyncIterator[bytes]:
    yield data
    raise ConnectionResetError("the client went away")


async def test_a_monolithic_push_that_fails_leaves_no_upload_behind(rig: Rig) -> None:
    data = b"half a layer"
    with pytest.raises(ConnectionResetError):
        await rig.registry.start_upload("app", Digest.of(data + b" and more"), failing(data))
    assert len(rig.registry.uploads) == 0
    assert list((rig.root / "tmp").iterdir()) == []


async def test_an_artifacts_blobs_must_be_in_its_repository_too(rig: Rig) -> None:
    """Else a writer could name any cached digest and keep it from eviction forever."""
    config = await push_blob(rig, "app", b"{}")
    cached = Digest.of(b"someone else's cached layer")
    body = image(config, [], blobs=[descriptor(cached, "application/octet-stream")])
    e = await refused(rig.registry.put_manifest("app", "v1", OCI_MANIFEST, body))
    assert e.code == "MANIFEST_BLOB_UNKNOWN" and "blobs" in str(e)
