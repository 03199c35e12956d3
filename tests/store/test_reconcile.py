"""Reconciliation on a real store: the files are the truth, the index is made to agree."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest

from appliance.oci.digest import Digest
from appliance.oci.mediatypes import OCI_MANIFEST
from appliance.store.files import FileBlobStore
from appliance.store.reconcile import INDEX_NAME, Progress, open_index, reconcile
from tests.store.stock import Store, Walk, unindexed


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


async def fill(store: Store, data: bytes) -> Digest:
    """What a fill does: the verified file renamed into place, then its row."""
    temp = store.files.create_temp()
    temp.write(data)
    digest = Digest.of(data)
    await store.files.commit(temp, digest)
    await store.index.add_blob(digest, len(data), None)
    return digest


async def test_blobs_fills_commit_while_reconciliation_walks_are_kept_and_counted_once(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    layers = [f"layer {i}".encode() for i in range(12)]
    digests = sorted((unindexed(store.files, data) for data in layers), key=str)
    # A damaged file whose name sorts first, so reconciliation reaches it before the rest.
    right = next(
        data
        for data in (f"the right content {i}".encode() for i in range(1000))
        if str(Digest.of(data)) < str(digests[0])
    )
    damaged = Digest.of(right)
    store.files.path_for(damaged).parent.mkdir(parents=True, exist_ok=True)
    store.files.path_for(damaged).write_bytes(b"damaged: not what the name says")
    walk = Walk(store.files, monkeypatch, at=damaged)
    progress = Progress()
    task = asyncio.create_task(reconcile(store.index, store.files, at_start=False,
                                         progress=progress))  # fmt: skip
    try:
        await walk.held()
        assert progress.of == 13 and progress.checked == 0
        # Meanwhile fills commit the damaged digest's real content and half the layers.
        assert await fill(store, right) == damaged
        for data in layers[::2]:
            await fill(store, data)
    finally:
        walk.go_on.set()
    report = await task
    assert store.files.path_for(damaged).read_bytes() == right  # not quarantined
    assert list(store.files.quarantine.glob("*.why")) == []
    assert store.rows() == {str(d) for d in [damaged, *digests]}
    assert await store.index.total_size() == len(right) + sum(len(d) for d in layers)
    assert report.quarantined == 0
    assert report.reindexed == 6  # the six the fills did not index meanwhile
    assert progress.checked == progress.of == 13
    assert progress.bytes == len(b"damaged: not what the name says") + sum(map(len, layers))


async def test_a_row_whose_file_is_committed_again_during_the_walk_stays(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    gone = await store.blob(b"evicted, then pulled again")
    store.files.path_for(Digest.parse(gone)).unlink()  # as if evicted: row left, file gone
    later = unindexed(store.files, b"a file reconciliation re-hashes")
    walk = Walk(store.files, monkeypatch, at=later)
    task = asyncio.create_task(reconcile(store.index, store.files, at_start=False))
    try:
        await walk.held()
        temp = store.files.create_temp()  # a fill puts the file back (its row is there)
        temp.write(b"evicted, then pulled again")
        await store.files.commit(temp, Digest.parse(gone))
    finally:
        walk.go_on.set()
    report = await task
    assert report.rows_removed == 0
    assert store.rows() == {gone, str(later)}


async def test_a_file_gone_before_it_is_hashed_or_quarantined_is_no_error(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two reconciliations at once (start-up's and `regcache cache gc`'s): the one that
    comes second finds the file moved away, and moves on."""
    bad = Digest.of(b"named")
    store.files.path_for(bad).parent.mkdir(parents=True, exist_ok=True)
    store.files.path_for(bad).write_bytes(b"other bytes")
    walk = Walk(store.files, monkeypatch, at=bad)
    task = asyncio.create_task(reconcile(store.index, store.files, at_start=False))
    try:
        await walk.held()
        store.files.move_to_quarantine(store.files.path_for(bad), "the other reconciliation")
    finally:
        walk.go_on.set()
    report = await task
    assert report.quarantined == 0 and store.rows() == set()
    assert len(list(store.files.quarantine.glob("*.why"))) == 1
