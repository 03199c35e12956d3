"""The local registry's rows in the real index (schema 6): a manifest goes in with its
references, source and tag at once; tags move; deletes take exactly their own rows; the
referrers, repositories and usage read back; all of it survives a restart."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path
from types import SimpleNamespace

import pytest

from appliance.local.ports import LocalManifest, LocalUsage
from appliance.oci.digest import Digest
from appliance.oci.mediatypes import OCI_INDEX, OCI_MANIFEST
from appliance.store import localstate
from appliance.store.index import SqliteIndex
from appliance.store.reconcile import INDEX_NAME
from tests.store.stock import Store

LOCAL = "registry.build.internal"
CONFIG, LAYER, OTHER = (Digest.of(x) for x in (b"{}", b"layer", b"other layer"))


def manifest(seed: bytes, subject: Digest | None = None, **extra: object) -> LocalManifest:
    return LocalManifest(Digest.of(seed), OCI_MANIFEST, 100 + len(seed), subject=subject,
                         **extra)  # type: ignore[arg-type]  # fmt: skip


def sources(root: Path) -> set[tuple[str, str, str]]:
    with contextlib.closing(sqlite3.connect(root / INDEX_NAME)) as db:
        return {(r, p, d) for r, p, d in db.execute("SELECT * FROM sources")}


async def test_a_manifest_put_is_read_back_with_its_tag_references_and_source(
    store: Store,
) -> None:
    index = store.index
    await index.add_local_blob("app", CONFIG, 2)
    await index.add_local_blob("app", LAYER, 5)
    m = manifest(b"m", artifact_type="application/example", annotations='{"a": "b"}',
                 subject=OTHER)  # fmt: skip
    await index.put_local_manifest("app", m, [CONFIG, LAYER], "v1", LOCAL)
    assert await index.local_manifest("app", m.digest) == m
    assert await index.local_manifest("other", m.digest) is None
    assert await index.local_tag("app", "v1") == m.digest
    assert await index.local_tag("app", "v2") is None
    assert await index.local_blob("app", LAYER) == 5
    assert await index.local_blob("other", LAYER) is None
    assert sources(store.root) == {(LOCAL, "app", str(m.digest))}
    snapshot = await index.snapshot()  # the store's own rows: eviction sees its references
    assert set(snapshot.children[str(m.digest)]) == {str(CONFIG), str(LAYER)}
    assert snapshot.entries[str(m.digest)].manifest
    assert snapshot.entries[str(LAYER)].size == 5


async def test_re_tagging_moves_the_tag_and_keeps_the_old_manifest(store: Store) -> None:
    index = store.index
    first, second = manifest(b"1"), manifest(b"2")
    await index.put_local_manifest("app", first, [], "v1", LOCAL)
    await index.put_local_manifest("app", second, [], "v1", LOCAL)
    assert await index.local_tag("app", "v1") == second.digest
    assert await index.local_tags("app") == ["v1"]
    assert await index.local_manifest("app", first.digest) == first
    await index.put_local_manifest("app", first, [], "latest", LOCAL)  # a second tag
    assert await index.local_tags("app") == ["latest", "v1"]


async def test_deleting_a_manifest_takes_its_tags_and_its_own_source_row_only(
    store: Store,
) -> None:
    index = store.index
    m, kept = manifest(b"m"), manifest(b"kept")
    await index.put_local_manifest("app", m, [], "v1", LOCAL)
    await index.put_local_manifest("app", m, [], "stable", LOCAL)
    await index.put_local_manifest("app", kept, [], "v2", LOCAL)
    await index.put_local_manifest("copy", m, [], "v1", LOCAL)
    await index.add_manifest(m.digest, m.size, OCI_MANIFEST, [], ("ghcr.io", "app"))
    assert await index.delete_local_manifest("app", m.digest, LOCAL) == ["stable", "v1"]
    assert await index.local_manifest("app", m.digest) is None
    assert await index.local_tags("app") == ["v2"]
    assert await index.local_tag("copy", "v1") == m.digest  # another repository's
    assert sources(store.root) == {
        ("ghcr.io", "app", str(m.digest)),  # another registry's pull of the same name
        (LOCAL, "app", str(kept.digest)),
        (LOCAL, "copy", str(m.digest)),
    }
    assert await index.delete_local_manifest("app", m.digest, LOCAL) is None


async def test_deleting_a_tag_or_a_blob_says_whether_there_was_one(store: Store) -> None:
    index = store.index
    m = manifest(b"m")
    await index.add_local_blob("app", LAYER, 5)
    await index.put_local_manifest("app", m, [LAYER], "v1", LOCAL)
    assert await index.delete_local_tag("app", "v1")
    assert not await index.delete_local_tag("app", "v1")
    assert await index.local_manifest("app", m.digest) == m
    assert await index.delete_local_blob("app", LAYER)
    assert not await index.delete_local_blob("app", LAYER)
    assert await index.local_blob("app", LAYER) is None
    assert str(LAYER) in store.rows()  # the store's row stays: eviction decides on it


async def test_tags_are_none_for_an_unknown_repository_and_empty_for_one_with_blobs(
    store: Store,
) -> None:
    index = store.index
    assert await index.local_tags("app") is None
    await index.add_local_blob("app", LAYER, 5)
    assert await index.local_tags("app") == []
    await index.put_local_manifest("untagged", manifest(b"m"), [], None, LOCAL)
    assert await index.local_tags("untagged") == []
    for tag in ("b", "a", "c"):
        await index.put_local_manifest("tagged", manifest(tag.encode()), [], tag, LOCAL)
    assert await index.local_tags("tagged") == ["a", "b", "c"]


async def test_referrers_come_oldest_first_then_by_digest(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    index = store.index
    now = [1000.0]
    monkeypatch.setattr(localstate, "time", SimpleNamespace(time=lambda: now[0]))
    subject = Digest.of(b"subject")
    signs = sorted((manifest(s, subject) for s in (b"s1", b"s2", b"s3")), key=lambda m: m.digest)
    last, first, second = signs  # pushed in an order that is not the digests'
    await index.put_local_manifest("app", first, [], None, LOCAL)
    now[0] = 2000.0
    for m in (second, last):
        await index.put_local_manifest("app", m, [], None, LOCAL)
    await index.put_local_manifest("app", manifest(b"unrelated"), [], None, LOCAL)
    await index.put_local_manifest("other", manifest(b"s9", subject), [], None, LOCAL)
    found = await index.local_referrers("app", subject)
    assert [m.digest for m in found] == [first.digest, *sorted((second.digest, last.digest))]
    assert found[0] == first
    assert await index.local_referrers("app", Digest.of(b"none")) == []


async def test_repositories_and_usage_count_each_digest_once(store: Store) -> None:
    index = store.index
    assert await index.local_usage() == LocalUsage(0, 0, 0, 0, 0)
    for repository in ("b", "a"):
        await index.add_local_blob(repository, CONFIG, 2)
        await index.add_local_blob(repository, LAYER, 5)
    await index.add_local_blob("a", LAYER, 5)  # pushed again: one row
    await index.add_local_blob("c", OTHER, 11)
    m = manifest(b"m")
    for repository, tag in (("a", "v1"), ("a", "v2"), ("b", "v1")):
        await index.put_local_manifest(repository, m, [CONFIG, LAYER], tag, LOCAL)
    await index.put_local_manifest("d", manifest(b"n"), [], None, LOCAL)
    assert await index.local_repositories() == ["a", "b", "c", "d"]
    usage = await index.local_usage()
    assert usage == LocalUsage(repositories=4, manifests=3, tags=3, blobs=5,
                               bytes=2 + 5 + 11 + m.size + manifest(b"n").size)  # fmt: skip


async def test_rows_survive_closing_and_reopening_the_index(tmp_path: Path) -> None:
    m = manifest(b"m", artifact_type="application/example", subject=OTHER)
    index = await SqliteIndex.open(tmp_path / INDEX_NAME)
    try:
        await index.add_local_blob("app", LAYER, 5)
        await index.put_local_manifest("app", m, [LAYER], "v1", LOCAL)
    finally:
        await index.close()
    index = await SqliteIndex.open(tmp_path / INDEX_NAME)
    try:
        assert await index.local_tag("app", "v1") == m.digest
        assert await index.local_manifest("app", m.digest) == m
        assert await index.local_blob("app", LAYER) == 5
        assert [r.digest for r in await index.local_referrers("app", OTHER)] == [m.digest]
        assert {str(m.digest), str(LAYER)} <= await index.pinned_digests()
    finally:
        await index.close()


async def test_an_index_manifest_keeps_its_media_type(store: Store) -> None:
    child = manifest(b"child")
    top = LocalManifest(Digest.of(b"top"), OCI_INDEX, 300)
    await store.index.put_local_manifest("app", child, [], None, LOCAL)
    await store.index.put_local_manifest("app", top, [child.digest], "v1", LOCAL)
    assert (await store.index.local_manifest("app", top.digest)) == top
    assert (await store.index.snapshot()).children[str(top.digest)] == [str(child.digest)]
