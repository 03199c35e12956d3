"""Which images an export takes: those named, every mirrored tag (backups left out, by
the name clients pull them by), every tag the store holds (the mirror's first, an index
over a single platform's manifest), set since a time, and kept signatures if asked."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from appliance.cache.ports import TagRow
from appliance.cli.bundle_select import Selection, UsageError, select
from appliance.config.model import Config, load_config
from appliance.mirror.records import MirroredTag, Place
from appliance.oci.digest import Digest
from appliance.oci.mediatypes import OCI_INDEX, OCI_MANIFEST
from appliance.store.files import FileBlobStore
from appliance.store.index import SqliteIndex
from appliance.store.reconcile import INDEX_NAME
from tests.harness import write_config
from tests.store.stock import Store

ALPINE = Place("docker.io", "library/alpine", "3.20")


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[tuple[Config, Store]]:
    rc = write_config(tmp_path)
    files = FileBlobStore(rc.state_dir)
    files.prepare()
    index = await SqliteIndex.open(rc.state_dir / INDEX_NAME)
    yield load_config(rc.config_path), Store(rc.state_dir, files, index)
    await index.close()


async def manifest(store: Store, seed: bytes, *, index: bool = False) -> Digest:
    layer = await store.blob(seed * 100)
    return Digest.parse(await store.manifest([layer], index=index))


async def mirrored(store: Store, digest: Digest, moved_s: float) -> None:
    tag = MirroredTag(ALPINE, "alpine:3.20", digest, OCI_MANIFEST, 10, moved_s, "network")
    assert await store.index.move_tag(tag, "sync", expect=None, backup=None, keep_backups=2)


async def test_the_mirror_the_cache_and_names_each_by_how_clients_pull_them(
    setup: tuple[Config, Store],
) -> None:
    config, store = setup
    alpine, single, multi = (await manifest(store, b"a"), await manifest(store, b"s"),
                             await manifest(store, b"m", index=True))  # fmt: skip
    await mirrored(store, alpine, time.time())
    for digest, kind in ((single, OCI_MANIFEST), (multi, OCI_INDEX)):  # two Accept keys
        await store.index.set_tag("ghcr.io", "org/app", "v1", kind,
                                  TagRow(digest, kind, 10, time.time()))  # fmt: skip
    chosen = await select(config, store.index, Selection(mirror=True))
    assert [(i.name, i.digest) for i in chosen] == [("docker.io/library/alpine:3.20", alpine)]
    everything = await select(config, store.index, Selection(all=True))
    assert {i.name: i.digest for i in everything} == {
        "docker.io/library/alpine:3.20": alpine, "ghcr.io/org/app:v1": multi}  # fmt: skip
    named = await select(config, store.index, Selection(images=("alpine:3.20",)))
    assert [(i.name, i.tag) for i in named] == [("docker.io/library/alpine:3.20", "3.20")]


async def test_since_leaves_out_tags_set_before(setup: tuple[Config, Store]) -> None:
    config, store = setup
    await mirrored(store, await manifest(store, b"old"), time.time() - 3 * 86400)
    assert await select(config, store.index, Selection(mirror=True, since="1d")) == []
    assert len(await select(config, store.index, Selection(mirror=True, since="7d"))) == 1
    with pytest.raises(UsageError, match="ISO time or an age"):
        await select(config, store.index, Selection(mirror=True, since="yesterday"))


async def test_kept_signatures_come_with_their_image_when_asked(
    setup: tuple[Config, Store],
) -> None:
    config, store = setup
    alpine, sig = await manifest(store, b"a"), await manifest(store, b"sig")
    await mirrored(store, alpine, time.time())
    await store.index.keep_referrers("docker.io", "library/alpine", alpine, [sig])
    images = await select(config, store.index, Selection(mirror=True, referrers=True))
    assert [(i.digest, i.subject) for i in images] == [(alpine, None), (sig, alpine)]
    with pytest.raises(UsageError, match="name images"):
        await select(config, store.index, Selection())
