"""Bundles on real stores: an export read back into a second, empty store byte for byte;
a delta holds only what its base lacks and is refused where its base is missing; a
damaged blob or a manifest whose blobs are nowhere is refused with nothing committed."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from appliance.oci.digest import Digest
from appliance.oci.mediatypes import OCI_INDEX, OCI_MANIFEST
from appliance.store import bundle, layout
from appliance.store.bundle import BundleError, Image
from appliance.store.files import FileBlobStore
from appliance.store.index import SqliteIndex
from appliance.store.layout import LayoutError
from appliance.store.reconcile import INDEX_NAME
from tests.store.stock import Store


@pytest.fixture
async def other(tmp_path: Path) -> AsyncIterator[Store]:
    root = tmp_path / "other"
    files = FileBlobStore(root)
    files.prepare()
    index = await SqliteIndex.open(root / INDEX_NAME)
    yield Store(root, files, index)
    await index.close()


async def image(store: Store, seed: bytes, repo: str = "a") -> Image:
    config = await store.blob(b"{}" + seed)
    layer = await store.blob(b"L" * 3000 + seed)
    digest = Digest.parse(await store.manifest([config, layer], repo=repo))
    size = store.files.size_of(digest)
    assert size is not None
    return Image(f"ghcr.io/org/{repo}:v1", "v1", digest, OCI_MANIFEST, size)


async def exported(store: Store, images: list[Image], out: Path, **kwargs: object) -> None:
    plan = await bundle.plan_export(store.index, store.files, images, **kwargs)  # type: ignore[arg-type]
    bundle.write(plan, store.files, out, as_tar=out.suffix == ".tar", base_id=None,
                 platforms=())  # fmt: skip


async def imported(target: Store, source: Path) -> int:
    staged = bundle.stage(source, target.files, None)
    try:
        found = bundle.complete(staged, target.files)
        return await bundle.commit(staged, target.files, target.index, found.manifests,
                                   lambda i: ("ghcr.io", "org/a"))  # fmt: skip
    finally:
        staged.discard(target.files)


@pytest.mark.parametrize("name", ["bundle.tar", "bundle-dir"])
async def test_an_export_is_imported_into_an_empty_store_byte_for_byte(
    store: Store, other: Store, tmp_path: Path, name: str
) -> None:
    images = [await image(store, b"1", "a"), await image(store, b"2", "b")]
    out = tmp_path / name
    await exported(store, images, out)
    assert await imported(other, out) > 0
    assert other.on_disk() == store.on_disk()
    for digest in store.on_disk():
        assert (other.files.path_for(Digest.parse(digest)).read_bytes()
                == store.files.path_for(Digest.parse(digest)).read_bytes())  # fmt: skip
    doc = json.loads((out / "index.json").read_text()) if out.is_dir() else None
    if doc is not None:
        names = [m["annotations"]["io.containerd.image.name"] for m in doc["manifests"]]
        assert names == ["ghcr.io/org/a:v1", "ghcr.io/org/b:v1"]
        assert (out / "oci-layout").read_bytes() == layout.LAYOUT
    assert await other.index.manifest_type(images[0].digest) == OCI_MANIFEST


async def test_a_delta_holds_only_new_blobs_and_needs_its_base(
    store: Store, other: Store, tmp_path: Path
) -> None:
    first = await image(store, b"1")
    await exported(store, [first], tmp_path / "base.tar")
    second = await image(store, b"2")
    base = layout.held_blobs(tmp_path / "base.tar")
    plan = await bundle.plan_export(store.index, store.files, [first, second], base=base)
    assert set(plan.omitted) == base and not set(plan.blobs) & base
    bundle.write(plan, store.files, tmp_path / "delta.tar", as_tar=True, base_id="base-1",
                 platforms=())  # fmt: skip
    with pytest.raises(BundleError, match="import the base bundle first"):
        bundle.stage(tmp_path / "delta.tar", other.files, None)
    assert list((other.root / "tmp").iterdir()) == []  # nothing left behind
    await imported(other, tmp_path / "base.tar")
    await imported(other, tmp_path / "delta.tar")
    assert other.on_disk() == store.on_disk()


async def test_a_damaged_blob_is_refused_by_its_digest_and_nothing_is_committed(
    store: Store, other: Store, tmp_path: Path
) -> None:
    first = await image(store, b"1")
    out = tmp_path / "dir"
    await exported(store, [first], out)
    layer = next(p for p in (out / "blobs" / "sha256").iterdir() if p.stat().st_size > 3000)
    data = bytearray(layer.read_bytes())
    data[100] ^= 1
    layer.write_bytes(bytes(data))
    with pytest.raises(LayoutError, match=f"sha256:{layer.name}: its bytes hash to"):
        bundle.stage(out, other.files, None)
    assert other.on_disk() == set() and list((other.root / "tmp").iterdir()) == []


async def test_a_manifest_whose_blobs_are_nowhere_is_refused_before_anything_is_stored(
    store: Store, other: Store, tmp_path: Path
) -> None:
    first = await image(store, b"1")
    out = tmp_path / "dir"
    await exported(store, [first], out)
    for blob in (out / "blobs" / "sha256").iterdir():
        if blob.name != first.digest.hex:
            blob.unlink()  # only the manifest is left
    staged = bundle.stage(out, other.files, None)
    try:
        with pytest.raises(BundleError, match="not in the bundle"):
            bundle.complete(staged, other.files)
    finally:
        staged.discard(other.files)
    assert other.on_disk() == set()


async def test_only_the_chosen_platforms_of_an_index_are_written_the_index_whole(
    store: Store, tmp_path: Path
) -> None:
    amd, arm = await image(store, b"amd"), await image(store, b"arm")
    platforms = ((amd.digest, amd.size, "amd64"), (arm.digest, arm.size, "arm64"))
    doc = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": OCI_MANIFEST, "digest": str(d), "size": s,
         "platform": {"os": "linux", "architecture": a}} for d, s, a in platforms]}  # fmt: skip
    body = json.dumps(doc).encode()
    temp = store.files.create_temp()
    temp.write(body)
    digest = Digest.of(body)
    await store.files.commit(temp, digest)
    await store.index.add_manifest(digest, len(body), OCI_INDEX, [amd.digest, arm.digest],
                                   ("ghcr.io", "a"))  # fmt: skip
    top = Image("ghcr.io/org/a:multi", "multi", digest, OCI_INDEX, len(body))
    plan = await bundle.plan_export(store.index, store.files, [top], platforms=("linux/arm64",))
    assert digest in plan.blobs and arm.digest in plan.blobs and amd.digest not in plan.blobs


async def lying(store: Store, other: Store, tmp_path: Path, **change: object) -> BundleError:
    """The export of one image with its index.json entry changed; complete's refusal."""
    first = await image(store, b"1")
    out = tmp_path / "lie"
    await exported(store, [first], out)
    doc = json.loads((out / "index.json").read_text())
    doc["manifests"][0].update(change)
    (out / "index.json").write_text(json.dumps(doc))
    staged = bundle.stage(out, other.files, None)
    try:
        with pytest.raises(BundleError) as caught:
            bundle.complete(staged, other.files)
    finally:
        staged.discard(other.files)
    return caught.value


async def test_a_manifest_listed_as_another_type_or_size_is_refused(
    store: Store, other: Store, tmp_path: Path
) -> None:
    e = await lying(store, other, tmp_path / "a", mediaType=OCI_INDEX)
    assert f"not a manifest of type {OCI_INDEX}" in str(e)
    e = await lying(store, other, tmp_path / "b", size=999_999)
    assert "not 999999" in str(e)


async def test_a_blob_listed_as_a_manifest_is_refused(
    store: Store, other: Store, tmp_path: Path
) -> None:
    layer = Digest.parse(await store.blob(b"\x00 not json"))
    e = await lying(store, other, tmp_path, digest=str(layer), size=13)
    assert "not in the bundle" in str(e) or "no manifest at all" in str(e)


async def test_a_full_bundle_may_not_lean_on_the_stores_content(
    store: Store, other: Store, tmp_path: Path
) -> None:
    """A layer the importing store holds for someone else, named by a bundle that does
    not carry it: refused, else importing it would open that layer to every client."""
    first = await image(store, b"1")
    out = tmp_path / "dir"
    await exported(store, [first], out)
    await imported(other, out)  # the other store holds the layer now
    for blob in (out / "blobs" / "sha256").iterdir():
        if blob.name != first.digest.hex:
            blob.unlink()
    staged = bundle.stage(out, other.files, None)
    try:
        with pytest.raises(BundleError, match="does not say its base holds it"):
            bundle.complete(staged, other.files)
    finally:
        staged.discard(other.files)


async def test_staged_blobs_hold_no_open_file(store: Store, other: Store, tmp_path: Path) -> None:
    await exported(store, [await image(store, b"1")], tmp_path / "b.tar")
    staged = bundle.stage(tmp_path / "b.tar", other.files, None)
    try:
        assert staged.blobs and all(temp.closed for temp, _ in staged.blobs.values())
    finally:
        staged.discard(other.files)
