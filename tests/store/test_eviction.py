"""Eviction on a real store: what to free, in which order, and the evictor that frees it."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from appliance.config.model import Size, StoreConfig
from appliance.oci.digest import Digest
from appliance.store.eviction import Evictor, Usage, bytes_to_free, plan
from tests.store.stock import Store

MiB = 1 << 20


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
    result = await Evictor(store.index, store.files, limits).check()
    # 10 MiB and a bit, down to 4 MiB: the 7 least recent images go, 3 rows each.
    assert result is not None and result.rows == 21
    assert await store.index.total_size() <= 4 * MiB
    kept = store.rows()
    assert set(images[7:]) <= kept and not set(images[:7]) & kept
    assert store.on_disk() == kept  # files gone with their rows, no more, no less
    assert await Evictor(store.index, store.files, limits).check() is None


async def test_a_digest_committed_again_while_it_is_evicted_keeps_its_file(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = b"d" * MiB
    digest = await store.blob(data, when=10)
    kept = await store.blob(b"k", when=20)
    deleting = store.index.delete

    async def delete_then_commit_again(
        victims: Sequence[tuple[str, float]], *, referenced: bool = False
    ) -> list[tuple[str, int]]:
        removed = await deleting(victims, referenced=referenced)
        # A client missed the row just deleted and its fill commits the digest again,
        # before eviction removes the files of the rows it deleted.
        await store.blob(data, when=30)
        return removed

    monkeypatch.setattr(store.index, "delete", delete_then_commit_again)
    limits = StoreConfig(max_size=Size(2 * MiB), high_watermark_pct=40, low_watermark_pct=10,
                         min_free=Size(0))  # fmt: skip
    result = await Evictor(store.index, store.files, limits).check()
    assert result is not None and result.rows == 1  # the first row went
    assert store.rows() == {digest, kept}  # the new row is there…
    assert store.files.path_for(Digest.parse(digest)).read_bytes() == data  # …and its file
    assert store.on_disk() == store.rows()


async def test_room_held_for_fills_is_made_by_eviction_or_refused(store: Store) -> None:
    old = await store.blob(b"o" * MiB, when=10)
    pinned = await store.blob(b"p" * MiB, when=20)
    await store.index.set_pin("ghcr.io", "a", pinned, True)
    limits = StoreConfig(max_size=Size(3 * MiB), high_watermark_pct=100, low_watermark_pct=50,
                         min_free=Size(0))  # fmt: skip
    evictor = Evictor(store.index, store.files, limits)
    running = asyncio.create_task(evictor.run())
    try:
        async with asyncio.timeout(10):  # a safety net: each answer comes after one pass
            assert await evictor.hold(MiB)  # 2 MiB stored + 1 MiB: fits
            assert evictor.held == MiB
            # Another MiB does not fit: the least recent content goes to make room.
            assert await evictor.hold(MiB)
            assert store.rows() == {pinned} and store.on_disk() == {pinned}
            assert evictor.held == 2 * MiB
            # Nothing more can go (pinned, or held by fills in flight): refused once a
            # pass has shown it, not after a wait, as soon as nothing is in flight.
            evictor.release(2 * MiB)
            assert not await evictor.hold(3 * MiB)
            assert not await evictor.hold(4 * MiB)  # more than the bound: never
            assert evictor.held == 0 and store.rows() == {pinned}
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
    assert old not in store.rows()
