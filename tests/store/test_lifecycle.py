"""Eviction, reconciliation and the `cache` operations on a real store: files on disk, the
SQLite index, the same code the service runs."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from appliance.config.model import Size, StoreConfig
from appliance.oci.digest import Digest
from appliance.oci.manifest import references
from appliance.oci.mediatypes import OCI_INDEX, OCI_MANIFEST
from appliance.store import maintenance
from appliance.store.eviction import Evictor, Usage, bytes_to_free, plan
from appliance.store.files import FileBlobStore
from appliance.store.index import SqliteIndex
from appliance.store.reconcile import INDEX_NAME, open_index, reconcile

MiB = 1 << 20


@dataclass
class Store:
    root: Path
    files: FileBlobStore
    index: SqliteIndex

    async def blob(self, data: bytes, when: float = 1000.0) -> str:
        digest = await self._file(data)
        await self.index.add_blob(digest, len(data), None)
        self.age(str(digest), when)
        return str(digest)

    async def manifest(
        self, children: list[str], repo: str = "a", when: float = 1000.0, index: bool = False
    ) -> str:
        if index:
            doc: dict[str, object] = {
                "schemaVersion": 2,
                "mediaType": OCI_INDEX,
                "manifests": [{"digest": c, "size": 1} for c in children],
            }
        else:
            doc = {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {"digest": children[0], "size": 1},
                "layers": [{"digest": c, "size": 1} for c in children[1:]],
            }
        body = json.dumps(doc).encode()
        digest = await self._file(body)
        media_type = OCI_INDEX if index else OCI_MANIFEST
        await self.index.add_manifest(
            digest, len(body), media_type, references(body), ("ghcr.io", repo)
        )
        self.age(str(digest), when)
        return str(digest)

    async def _file(self, data: bytes) -> Digest:
        temp = self.files.create_temp()
        temp.write(data)
        digest = Digest.of(data)
        await self.files.commit(temp, digest)
        return digest

    def age(self, digest: str, when: float) -> None:
        with contextlib.closing(sqlite3.connect(self.root / INDEX_NAME)) as db, db:
            db.execute("UPDATE blobs SET last_access_s = ? WHERE digest = ?", (when, digest))

    def rows(self) -> set[str]:
        with contextlib.closing(sqlite3.connect(self.root / INDEX_NAME)) as db:
            return {r[0] for r in db.execute("SELECT digest FROM blobs")}

    def on_disk(self) -> set[str]:
        return {str(d) for _, d in self.files.walk() if d is not None}


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    files = FileBlobStore(tmp_path)
    files.prepare()
    index = await SqliteIndex.open(tmp_path / INDEX_NAME)
    yield Store(tmp_path, files, index)
    await index.close()


def test_sizes_parse_and_bad_ones_are_refused() -> None:
    assert Size.parse("50GiB").bytes == 50 << 30 and Size.parse("500MB").bytes == 500 * 10**6
    assert Size.parse(1024).bytes == 1024 and Size.parse("80%").of(1000) == 800
    for bad in ("80 apples", "-5GB", "0%", "120%", True, "GiB"):
        with pytest.raises(ValueError, match="expected"):
            Size.parse(bad)


def test_watermarks_and_free_space_decide_what_to_free() -> None:
    limits = StoreConfig(max_size=Size(1000), high_watermark_pct=90, low_watermark_pct=70,
                         min_free=Size(100))  # fmt: skip
    assert bytes_to_free(limits, Usage(stored=900, filesystem=10_000, free=5000)) == 0
    assert bytes_to_free(limits, Usage(stored=901, filesystem=10_000, free=5000)) == 201
    # Under the bound but the filesystem is short of its floor: free floor + gap.
    assert bytes_to_free(limits, Usage(stored=500, filesystem=10_000, free=50)) == 250
    assert bytes_to_free(limits, Usage(stored=100, filesystem=10_000, free=50)) == 100
    assert bytes_to_free(limits, Usage(stored=500, filesystem=10_000, free=5000), urgent=True) > 0


async def test_eviction_takes_least_recent_images_whole_and_keeps_shared_layers(
    store: Store,
) -> None:
    shared = await store.blob(b"s" * MiB, when=10)
    old_cfg, old_layer = await store.blob(b"oc", when=10), await store.blob(b"o" * MiB, when=10)
    old = await store.manifest([old_cfg, shared, old_layer], when=10)
    new_cfg, new_layer = await store.blob(b"nc", when=500), await store.blob(b"n" * MiB, when=500)
    new = await store.manifest([new_cfg, shared, new_layer], when=20)  # its layer is recent
    loose = await store.blob(b"l" * MiB, when=100)
    order = plan(await store.index.snapshot(), need=1, busy=set())
    # The old image goes first, manifest before what it references; the shared layer stays.
    assert [d for d, _ in order] == [old, old_layer, old_cfg]
    order = plan(await store.index.snapshot(), need=3 * MiB, busy=set())
    assert [d for d, _ in order][:4] == [old, old_layer, old_cfg, loose]
    assert [d for d, _ in order][4] == new and shared in [d for d, _ in order]
    assert order.index((shared, 10.0)) > order.index((new, 20.0))
    assert plan(await store.index.snapshot(), 3 * MiB, busy={loose})[3][0] == new


async def test_an_index_goes_with_its_platform_manifests_and_a_pin_keeps_all(
    store: Store,
) -> None:
    layers = [await store.blob(bytes([i]) * MiB, when=5) for i in range(4)]
    amd = await store.manifest(layers[:2], when=5)
    arm = await store.manifest(layers[2:], when=900)  # one platform pulled recently
    idx = await store.manifest([amd, arm], when=5, index=True)
    other = await store.manifest([await store.blob(b"x", when=50)], when=50)
    order = [d for d, _ in plan(await store.index.snapshot(), 1, set())]
    assert order[0] == other  # the index is as recent as its most recent platform
    order = [d for d, _ in plan(await store.index.snapshot(), 10 * MiB, set())]
    assert order.index(idx) < order.index(amd) < order.index(layers[0])
    assert order.index(idx) < order.index(arm) < order.index(layers[3])
    await store.index.set_pin("ghcr.io", "a", idx, True)
    order = [d for d, _ in plan(await store.index.snapshot(), 10 * MiB, set())]
    assert not {idx, amd, arm, *layers} & set(order)


async def test_evictor_brings_the_store_from_high_to_low_watermark(store: Store) -> None:
    images = []
    for i in range(10):  # 10 images of 1 MiB + a config, accessed in order
        layer = await store.blob(bytes([i]) * MiB, when=100 + i)
        images.append(await store.manifest([await store.blob(b"c%d" % i, when=100 + i), layer],
                                           when=100 + i))  # fmt: skip
    limits = StoreConfig(max_size=Size(8 * MiB), high_watermark_pct=90, low_watermark_pct=50,
                         min_free=Size(0))  # fmt: skip
    result = await Evictor(store.index, store.files, limits, grace_s=0).check()
    # 10 MiB and a bit, down to 4 MiB: the 7 least recent images go, 3 rows each.
    assert result is not None and result.rows == 21
    assert await store.index.total_size() <= 4 * MiB
    kept = store.rows()
    assert set(images[7:]) <= kept and not set(images[:7]) & kept
    assert store.on_disk() == kept  # files gone with their rows, no more, no less
    assert await Evictor(store.index, store.files, limits, grace_s=0).check() is None


async def test_delete_rechecks_references_inside_its_transaction(store: Store) -> None:
    layer = await store.blob(b"L" * 100, when=1)
    order = plan(await store.index.snapshot(), 1, set())
    assert order == [(layer, 1.0)]
    await store.manifest([await store.blob(b"cfg"), layer])  # stored after the plan was made
    assert await store.index.delete(order) == []
    store.age(layer, 5)  # used after the plan: not the least recent any more
    assert await store.index.delete([(layer, 1.0)], referenced=True) == []


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


async def test_remove_refuses_to_break_references_and_pins(store: Store) -> None:
    shared = await store.blob(b"shared")
    one = await store.manifest([await store.blob(b"c1"), shared], repo="one")
    two = await store.manifest([await store.blob(b"c2"), shared], repo="two")
    with pytest.raises(maintenance.Refused, match="referenced by"):
        await maintenance.remove(
            store.index, store.files, maintenance.Selection(digest=shared), force=False
        )
    await store.index.set_pin("ghcr.io", "one", one, True)
    select_one = maintenance.Selection(frozenset({"ghcr.io"}), "one")
    with pytest.raises(maintenance.Refused, match="pinned"):
        await maintenance.remove(store.index, store.files, select_one, force=False)
    assert await store.index.set_pin("ghcr.io", "one", one, False)
    removal = await maintenance.remove(store.index, store.files, select_one, force=False)
    assert removal.rows == 2 and one not in store.rows() and shared in store.rows()
    assert two in store.rows() and store.on_disk() == store.rows()
    forced = await maintenance.remove(
        store.index, store.files, maintenance.Selection(digest=shared), force=True
    )
    assert forced.rows == 1 and shared not in store.on_disk()


async def test_a_manifest_two_repositories_pulled_stays_for_the_other(store: Store) -> None:
    image = await store.manifest([await store.blob(b"cfg")], repo="one")
    store.index.note_source("ghcr.io", "two", Digest.parse(image))
    await store.index.flush()
    removal = await maintenance.remove(
        store.index, store.files, maintenance.Selection(frozenset({"ghcr.io"}), "one"), force=False
    )
    assert removal.rows == 0 and removal.kept and image in store.rows()
    listed = await maintenance.images(store.index, maintenance.Selection())
    assert [(i.repository, i.digest) for i in listed] == [("two", image)]


async def test_verify_quarantines_a_damaged_blob_and_drops_its_row(store: Store) -> None:
    good = await store.blob(b"good" * 1000)
    bad = await store.blob(b"bad" * 1000)
    path = store.files.path_for(Digest.parse(bad))
    path.write_bytes(b"bit rot" + path.read_bytes()[7:])
    seen: list[int] = []
    report = await maintenance.verify(
        store.index, store.files, None, lambda i, _n, _b: seen.append(i)
    )
    assert report.bad == [bad] and report.checked == 2 and seen == [1, 2]
    assert store.rows() == {good} and not path.exists()
    assert len(list(store.files.quarantine.glob("*.why"))) == 1


async def test_gc_removes_only_old_unreferenced_blobs(store: Store) -> None:
    old_loose = await store.blob(b"old", when=1)
    new_loose = await store.blob(b"new", when=4e9)  # the future: recently used
    image = await store.manifest([await store.blob(b"cfg", when=1)], when=1)
    result = await maintenance.gc(store.index, store.files, StoreConfig(), min_age_s=3600)
    assert result.unreferenced_rows == 1 and old_loose not in store.rows()
    assert {new_loose, image} <= store.rows()
