"""Reconciliation on a real store: the files are the truth, the index is made to agree."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from appliance.oci.digest import Digest
from appliance.oci.mediatypes import OCI_MANIFEST
from appliance.store.files import FileBlobStore
from appliance.store.reconcile import INDEX_NAME, open_index, reconcile
from tests.store.stock import Store


async def test_reconciliation_makes_the_index_agree_with_the_files(store: Store) -> None:
    kept = await store.blob(b"kept")
    lost = await store.blob(b"lost")
    store.files.path_for(Digest.parse(lost)).unlink()
    layer = b"orphan layer"
    manifest = json.dumps(
        {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": {"digest": kept},
         "layers": [{"digest": str(Digest.of(layer))}]}
    ).encode()  # fmt: skip
    for data in (layer, manifest):  # files committed, rows never written (a crash)
        temp = store.files.create_temp()
        temp.write(data)
        await store.files.commit(temp, Digest.of(data))
    bad = Digest.of(b"what the name says")
    store.files.path_for(bad).parent.mkdir(parents=True, exist_ok=True)
    store.files.path_for(bad).write_bytes(b"something else")
    (store.root / "blobs" / "sha256" / "stray.txt").write_text("x")
    store.files.create_temp().write(b"interrupted fill")
    report = await reconcile(store.index, store.files, at_start=True)
    assert (report.temp_removed, report.rows_removed, report.reindexed, report.quarantined) == (
        1, 1, 2, 2,
    )  # fmt: skip
    assert store.rows() == {kept, str(Digest.of(layer)), str(Digest.of(manifest))}
    assert await store.index.manifest_type(Digest.of(manifest)) == OCI_MANIFEST
    snapshot = await store.index.snapshot()
    assert set(snapshot.children[str(Digest.of(manifest))]) == {kept, str(Digest.of(layer))}
    assert len(list(store.files.quarantine.glob("*.why"))) == 2
    assert list((store.root / "tmp").iterdir()) == []
    again = await reconcile(store.index, store.files, at_start=True)
    assert (again.rows_removed, again.reindexed, again.quarantined) == (0, 0, 0)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "deleted"])
async def test_a_corrupt_index_is_moved_aside_and_rebuilt(tmp_path: Path, damage: str) -> None:
    files = FileBlobStore(tmp_path)
    files.prepare()
    index, rebuilt = await open_index(tmp_path)
    assert not rebuilt
    store = Store(tmp_path, files, index)
    blobs = {await store.blob(bytes([i]) * 5000) for i in range(50)}
    await index.close()
    path = tmp_path / INDEX_NAME
    if damage == "garbage":
        path.write_bytes(os.urandom(8192))
    elif damage == "deleted":
        path.unlink()
    else:
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2] + bytes(len(data) // 2))
    index, rebuilt = await open_index(tmp_path)
    try:
        assert rebuilt
        assert bool(list(tmp_path.glob(f"{INDEX_NAME}.corrupt-*"))) == (damage != "deleted")
        report = await reconcile(index, files, at_start=True)
        assert report.reindexed == 50 and set((await index.sizes()).keys()) == blobs
        assert await index.integrity_check() == "ok"
    finally:
        await index.close()
