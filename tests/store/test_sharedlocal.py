"""The local registry shared by two gateways through one bucket (a real S3 endpoint, two
real indexes and stores, the registry's own operations): an image pushed to one is
pulled from the other, its blobs verified; tag moves and deletes follow, the later of two
pushes of one tag wins on both, a push made while the bucket is down is shared once it
answers, and a gateway never imports a manifest whose blobs the bucket lacks."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from appliance.config.shared import S3Config
from appliance.local.ports import LocalError
from appliance.local.registry import LocalRegistry
from appliance.local.uploads import LocalUploads
from appliance.oci.digest import Digest
from appliance.oci.mediatypes import OCI_INDEX, OCI_MANIFEST
from appliance.store.files import FileBlobStore
from appliance.store.index import SqliteIndex
from appliance.store.s3 import Bucket, BucketUnavailable
from appliance.store.sharedlocal import SharedLocal
from appliance.store.tier import blob_name

NAME = "registry.build.internal"
REPO = "team/app"


@dataclass
class Gateway:
    files: FileBlobStore
    index: SqliteIndex
    registry: LocalRegistry
    shared: SharedLocal


@contextlib.asynccontextmanager
async def gateway(root: Path, bucket: Bucket, name: str) -> AsyncIterator[Gateway]:
    files = FileBlobStore(root)
    files.prepare()
    index = await SqliteIndex.open(root / "index.sqlite")
    shared = SharedLocal(index, files, bucket, name, source=NAME, part_bytes=5 << 20)
    uploads = LocalUploads(files, purge_after_s=3600.0, max_sessions=16)
    try:
        yield Gateway(files, index, LocalRegistry(index, files, uploads, NAME, replica=shared),
                      shared)  # fmt: skip
    finally:
        await index.close()


@pytest.fixture
async def pair(tmp_path: Path, bucket_config: S3Config) -> AsyncIterator[tuple[Gateway, Gateway]]:
    async with (
        Bucket(bucket_config).open() as bucket,
        gateway(tmp_path / "a", bucket, "gw-a") as a,
        gateway(tmp_path / "b", bucket, "gw-b") as b,
    ):
        yield a, b


async def chunks(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def push(gw: Gateway, tag: str, layer: bytes) -> Digest:
    """An image (a config and `layer`) pushed to `gw` under `tag`: its manifest digest."""
    config = json.dumps({"tag": tag}).encode()
    for data in (config, layer):
        reply = await gw.registry.start_upload(REPO, Digest.of(data), chunks(data))
        assert reply.status == 201
    body = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": str(Digest.of(config)), "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": str(Digest.of(layer)), "size": len(layer)}],
    }).encode()  # fmt: skip
    reply = await gw.registry.put_manifest(REPO, tag, OCI_MANIFEST, body)
    assert reply.status == 201
    return Digest.parse(reply.headers["Docker-Content-Digest"])


async def pulled(gw: Gateway, tag: str) -> tuple[Digest, list[bytes]]:
    """The tag's manifest digest on `gw`, and each blob it names, read from `gw`'s store."""
    stored = await gw.registry.manifest(REPO, tag)
    doc = json.loads(stored.path.read_bytes())
    blobs = [await gw.registry.blob(REPO, Digest.parse(d["digest"]))
             for d in [doc["config"], *doc["layers"]]]  # fmt: skip
    return stored.digest, [b.path.read_bytes() for b in blobs]


async def test_an_image_pushed_to_one_gateway_is_pulled_from_the_other(
    pair: tuple[Gateway, Gateway],
) -> None:
    a, b = pair
    layer = bytes(range(256)) * (24 << 10)  # 6 MiB: a multipart upload of two parts
    digest = await push(a, "v1", layer)
    assert a.shared.nudged.is_set()  # the push asks for a converge at once
    published = await a.shared.converge()
    assert published.published == 2  # the manifest's record and the tag's
    imported = await b.shared.converge()
    assert (imported.imported, imported.published) == (2, 0)
    got, blobs = await pulled(b, "v1")
    assert got == digest and blobs[1] == layer
    assert not await a.shared.converge() and not await b.shared.converge()  # settled


async def test_tag_moves_and_deletes_follow(pair: tuple[Gateway, Gateway]) -> None:
    a, b = pair
    await push(a, "v1", b"one")
    await a.shared.converge()
    await b.shared.converge()
    second = await push(a, "v1", b"two")  # moved on A
    await push(a, "old", b"three")
    await a.shared.converge()
    await b.shared.converge()
    assert (await pulled(b, "v1"))[0] == second
    assert (await b.registry.delete_manifest(REPO, "old")).status == 202  # deleted on B
    await b.shared.converge()
    await a.shared.converge()
    with pytest.raises(LocalError, match="not known"):
        await a.registry.manifest(REPO, "old")
    assert (await a.registry.delete_manifest(REPO, second)).status == 202  # by digest, on A
    await a.shared.converge()
    await b.shared.converge()
    with pytest.raises(LocalError, match="not known"):
        await b.registry.manifest(REPO, second)
    with pytest.raises(LocalError, match="not known"):
        await b.registry.manifest(REPO, "v1")


async def test_of_two_pushes_of_one_tag_the_later_wins_on_both(
    pair: tuple[Gateway, Gateway],
) -> None:
    a, b = pair
    await push(a, "latest", b"from a")
    later = await push(b, "latest", b"from b")
    for gw in (a, b, a, b):
        await gw.shared.converge()
    assert (await pulled(a, "latest"))[0] == (await pulled(b, "latest"))[0] == later


async def test_a_push_while_the_bucket_is_down_is_shared_later(
    pair: tuple[Gateway, Gateway], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = pair
    bucket = a.shared._bucket

    async def down(*_args: object, **_kwargs: object) -> None:
        raise BucketUnavailable("connection refused")

    with monkeypatch.context() as patched:
        patched.setattr(bucket, "put", down)
        digest = await push(a, "v1", b"offline")  # the push itself never waits on the bucket
        with pytest.raises(BucketUnavailable):
            await a.shared.converge()
        assert (await a.registry.delete_manifest(REPO, "v1")).status == 202
        digest = await push(a, "v1", b"offline again")
        with pytest.raises(BucketUnavailable):
            await a.shared.converge()
    await a.shared.converge()
    await b.shared.converge()
    assert (await pulled(b, "v1"))[0] == digest


async def test_a_manifest_whose_blob_the_bucket_lacks_is_not_imported(
    pair: tuple[Gateway, Gateway],
) -> None:
    a, b = pair
    await push(a, "v1", b"layer bytes")
    await a.shared.converge()
    await a.shared._bucket.delete(blob_name(Digest.of(b"layer bytes")))
    assert (await b.shared.converge()).imported == 0
    with pytest.raises(LocalError, match="not known"):
        await b.registry.manifest(REPO, "v1")
    await a.shared._bucket.put(blob_name(Digest.of(b"layer bytes")), b"other bytes")
    assert (await b.shared.converge()).imported == 0  # it does not verify: not kept
    assert b.files.size_of(Digest.of(b"layer bytes")) is None


async def test_a_delete_made_while_the_bucket_is_down_survives_a_restart(
    pair: tuple[Gateway, Gateway], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    a, b = pair
    digest = await push(a, "v1", b"to be deleted")
    await a.shared.converge()
    await b.shared.converge()
    pending = tmp_path / "pending.json"
    bucket = a.shared._bucket
    first = SharedLocal(a.index, a.files, bucket, "gw-a", source=NAME, pending=pending)
    a.registry.replica = first

    async def down(*_args: object, **_kwargs: object) -> None:
        raise BucketUnavailable("connection refused")

    with monkeypatch.context() as patched:
        patched.setattr(bucket, "put", down)
        assert (await a.registry.delete_manifest(REPO, digest)).status == 202
        with pytest.raises(BucketUnavailable):
            await first.converge()
    assert pending.exists()
    restarted = SharedLocal(a.index, a.files, bucket, "gw-a", source=NAME, pending=pending)
    await restarted.converge()  # writes what the first run could not
    assert json.loads(pending.read_text()) == []
    await b.shared.converge()
    with pytest.raises(LocalError, match="not known"):
        await b.registry.manifest(REPO, "v1")
    await restarted.converge()
    with pytest.raises(LocalError, match="not known"):
        await a.registry.manifest(REPO, digest)  # not imported back


async def test_a_tag_of_a_deleted_manifest_does_not_come_back(
    pair: tuple[Gateway, Gateway],
) -> None:
    a, b = pair
    digest = await push(a, "v1", b"shared manifest")
    await a.shared.converge()
    await b.shared.converge()
    stored = await b.registry.manifest(REPO, digest)
    body = stored.path.read_bytes()
    assert (await b.registry.put_manifest(REPO, "v2", OCI_MANIFEST, body)).status == 201
    await b.shared.converge()  # v2 names it in the bucket; A has not seen v2 yet
    assert (await a.registry.delete_manifest(REPO, digest)).status == 202
    for gw in (a, b, a, b):
        await gw.shared.converge()
    for gw in (a, b):
        for tag in ("v1", "v2"):
            with pytest.raises(LocalError, match="not known"):
                await gw.registry.manifest(REPO, tag)
    await asyncio.sleep(0.01)
    await push(a, "v1", b"shared manifest")  # the same manifest pushed again, later
    for gw in (a, b, a, b):
        await gw.shared.converge()
    for gw in (a, b):
        assert (await pulled(gw, "v1"))[0] == digest
        with pytest.raises(LocalError, match="not known"):
            await gw.registry.manifest(REPO, "v2")  # deleted with it: stays deleted


async def test_an_index_is_imported_only_with_its_child_manifests(
    pair: tuple[Gateway, Gateway],
) -> None:
    a, b = pair
    child = await push(a, "child", b"platform layer")
    size = (await a.registry.manifest(REPO, child)).size
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": OCI_MANIFEST, "digest": str(child), "size": size,
         "platform": {"architecture": "amd64", "os": "linux"}}]}).encode()  # fmt: skip
    assert (await a.registry.put_manifest(REPO, "multi", OCI_INDEX, index)).status == 201
    await a.shared.converge()
    await a.shared._bucket.delete(f"local/manifests/{REPO}/{child}")  # the child's record
    for _ in range(2):
        await b.shared.converge()
    with pytest.raises(LocalError, match="not known"):
        await b.registry.manifest(REPO, "multi")  # never without its child
    await a.shared.converge()  # A publishes the child's record again: it lacks one
    await b.shared.converge()
    await b.shared.converge()  # the child, then the index (whatever order they listed in)
    assert (await b.registry.manifest(REPO, "multi")).size == len(index)
