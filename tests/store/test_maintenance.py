"""The `cache` operations on a real store: remove, list, verify, collect."""

from __future__ import annotations

import pytest

from appliance.config.model import StoreConfig
from appliance.oci.digest import Digest
from appliance.store import maintenance
from tests.store.stock import Store


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


async def test_verify_tells_a_lost_file_from_one_evicted_while_it_ran(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Eviction removes a row, then its file: verify, listing before, must not call that
    blob lost (a serving regcache evicts while `cache verify` runs)."""
    lost = await store.blob(b"lost" * 100)
    evicted = await store.blob(b"evicted" * 100)
    store.files.path_for(Digest.parse(lost)).unlink()  # gone with its row still there
    hashes = store.files.hashes_to_name

    def racing(path: object, digest: Digest) -> bool:
        if str(digest) == evicted:  # eviction wins the race for this one
            raise FileNotFoundError(str(path))
        return hashes(path, digest)  # type: ignore[arg-type]

    original_sizes = store.index.sizes

    async def listed_then_evicted() -> dict[str, int]:
        listing = await original_sizes()
        await store.index.delete([(evicted, float("inf"))], referenced=True)
        return listing

    monkeypatch.setattr(store.index, "sizes", listed_then_evicted)
    monkeypatch.setattr(store.files, "hashes_to_name", racing)
    report = await maintenance.verify(store.index, store.files, None)
    assert report.missing == [lost] and evicted not in report.missing
    assert store.rows() == set()  # the lost one's row goes; the evicted one's went before


async def test_gc_removes_only_old_unreferenced_blobs(store: Store) -> None:
    old_loose = await store.blob(b"old", when=1)
    new_loose = await store.blob(b"new", when=4e9)  # the future: recently used
    image = await store.manifest([await store.blob(b"cfg", when=1)], when=1)
    result = await maintenance.gc(store.index, store.files, StoreConfig(), min_age_s=3600)
    assert result.unreferenced_rows == 1 and old_loose not in store.rows()
    assert {new_loose, image} <= store.rows()
