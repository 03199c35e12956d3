"""The index's lifecycle queries on a real store."""

from __future__ import annotations

from appliance.cache.ports import TagRow
from appliance.oci.digest import Digest
from appliance.oci.mediatypes import OCI_MANIFEST
from appliance.store.eviction import plan
from tests.store.stock import Store


async def test_delete_rechecks_references_inside_its_transaction(store: Store) -> None:
    layer = await store.blob(b"L" * 100, when=1)
    order = plan(await store.index.snapshot(), 1, set())
    assert order == [(layer, 1.0)]
    await store.manifest([await store.blob(b"cfg"), layer])  # stored after the plan was made
    assert await store.index.delete(order) == []
    store.age(layer, 5)  # used after the plan: not the least recent any more
    assert await store.index.delete([(layer, 1.0)], referenced=True) == []


async def test_forgetting_one_repositorys_claim_on_a_manifest_leaves_the_others(
    store: Store,
) -> None:
    image = await store.manifest([await store.blob(b"cfg")], repo="one")
    row = TagRow(Digest.parse(image), OCI_MANIFEST, 1, 1.0)
    for repository, tag in (("one", "v1"), ("one", "latest"), ("two", "v1")):
        await store.index.set_tag("ghcr.io", repository, tag, "k", row)
    assert await store.index.claims(image) == 4  # pulled through "one", and three tags
    await store.index.forget("ghcr.io", "one", "v1", image)
    assert await store.index.claims(image) == 3  # "latest" still names it in "one"
    await store.index.forget("ghcr.io", "one", None, image)
    assert await store.index.claims(image) == 1
    assert await store.index.tags() == [("ghcr.io", "two", "v1", image)]


async def test_a_pin_holds_a_tags_digest_or_a_digest_and_says_whether_it_changed(
    store: Store,
) -> None:
    image = await store.manifest([await store.blob(b"cfg")], repo="one")
    row = TagRow(Digest.parse(image), OCI_MANIFEST, 1, 1.0)
    await store.index.set_tag("ghcr.io", "one", "v1", "k", row)
    assert await store.index.set_pin("ghcr.io", "one", "v1", True)
    assert not await store.index.set_pin("ghcr.io", "one", "v1", True)
    loose = await store.blob(b"loose")
    assert await store.index.set_pin("ghcr.io", "one", loose, True)
    assert await store.index.pinned_digests() == {image, loose}
    assert await store.index.pins() == sorted([("ghcr.io", "one", "v1"), ("ghcr.io", "one", loose)])
    assert await store.index.set_pin("ghcr.io", "one", "v1", False)
    assert not await store.index.set_pin("ghcr.io", "one", "v1", False)
    assert await store.index.pinned_digests() == {loose}


async def test_a_cached_blob_pushed_to_the_local_registry_after_the_plan_is_not_deleted(
    store: Store,
) -> None:
    """Eviction planned over a cached layer; a push to the local registry then made it
    the local registry's: the delete, checked inside its transaction, leaves it."""
    layer = await store.blob(b"L" * 100, when=1)
    order = plan(await store.index.snapshot(), 1, set())
    assert order == [(layer, 1.0)]
    await store.index.add_local_blob("team/app", Digest.parse(layer), 100)
    assert await store.index.delete(order, referenced=True) == []
    assert layer in await store.index.pinned_digests()


async def test_digests_held_by_an_import_are_pinned_until_it_lets_go(store: Store) -> None:
    layer = await store.blob(b"held" * 100, when=1)
    await store.index.hold_digests("regcache-import-1", [Digest.parse(layer)], held=True)
    assert layer in await store.index.pinned_digests()
    assert plan(await store.index.snapshot(), 1, set()) == []
    await store.index.hold_digests("regcache-import-1", (), held=False)
    assert layer not in await store.index.pinned_digests()
