"""The mirror's rows survive an index rebuilt from the files: saved beside the index,
restored into one that has none."""

from __future__ import annotations

import json
from pathlib import Path

from appliance.local.ports import LocalManifest
from appliance.mirror.records import MirroredTag, Place
from appliance.oci.digest import Digest
from appliance.oci.mediatypes import OCI_MANIFEST
from appliance.store import mirrorjournal
from appliance.store.index import SqliteIndex

A, B, SIG = Digest.of(b"a"), Digest.of(b"b"), Digest.of(b"sig")
PLACE = Place("docker.io", "library/alpine", "3.20")


def tag(digest: Digest, at: float, pin: Digest | None = None) -> MirroredTag:
    return MirroredTag(PLACE, "alpine:3.20", digest, OCI_MANIFEST, 10, at, "network", pin)


async def filled(path: Path) -> SqliteIndex:
    index = await SqliteIndex.open(path)
    await index.move_tag(tag(A, 1.0), "sync", expect=None, backup=None, keep_backups=2)
    await index.move_tag(tag(B, 2.0, pin=B), "rollback", expect=A, backup="3.20-old",
                         keep_backups=2)  # fmt: skip
    await index.add_entry("docker.io/library/busybox:1", "upstream")
    await index.keep_referrers("docker.io", "library/alpine", B, [SIG])
    return index


async def test_a_rebuilt_index_gets_tags_pins_history_and_entries_back(tmp_path: Path) -> None:
    index = await filled(tmp_path / "index.sqlite")
    await mirrorjournal.save(tmp_path, index)
    before = await index.mirrored_tags()
    await index.close()
    (tmp_path / "index.sqlite").unlink()  # what open_index does with a corrupt one
    fresh = await SqliteIndex.open(tmp_path / "index.sqlite")
    assert await mirrorjournal.restore(tmp_path, fresh) > 0
    assert await fresh.mirrored_tags() == before
    assert [m.reason for m in await fresh.mirror_history(PLACE)] == ["sync", "rollback"]
    assert await fresh.added_entries() == [("docker.io/library/busybox:1", "upstream")]
    assert {str(A), str(B), str(SIG)} <= await fresh.pinned_digests()  # eviction spares them
    await fresh.close()


async def test_an_index_with_mirror_rows_is_left_alone(tmp_path: Path) -> None:
    index = await filled(tmp_path / "index.sqlite")
    await mirrorjournal.save(tmp_path, index)
    await index.move_tag(tag(A, 3.0), "sync", expect=B, backup=None, keep_backups=2)
    assert await mirrorjournal.restore(tmp_path, index) == 0
    assert [t.digest for t in await index.mirrored_tags() if t.backup_of is None] == [A]
    await index.close()


async def test_an_unreadable_journal_restores_nothing(tmp_path: Path) -> None:
    (tmp_path / mirrorjournal.JOURNAL_NAME).write_text('{"version": 1, "tables": {')
    index = await SqliteIndex.open(tmp_path / "index.sqlite")
    assert await mirrorjournal.restore(tmp_path, index) == 0
    assert await index.mirrored_tags() == []
    await index.close()


async def test_the_journal_is_replaced_whole_and_private_to_the_service(tmp_path: Path) -> None:
    index = await filled(tmp_path / "index.sqlite")
    await mirrorjournal.save(tmp_path, index)
    path = tmp_path / mirrorjournal.JOURNAL_NAME
    assert path.stat().st_mode & 0o777 == 0o600
    assert len(json.loads(path.read_text())["tables"]["mirror_tags"]) == 2
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
    await index.close()


async def test_the_local_registry_gets_its_blobs_manifests_and_tags_back(tmp_path: Path) -> None:
    """Pushed to the local registry, it exists nowhere else: a rebuilt index must not
    forget it (nor let eviction take it)."""
    index = await SqliteIndex.open(tmp_path / "index.sqlite")
    await index.add_local_blob("team/app", A, 1)
    manifest = LocalManifest(B, OCI_MANIFEST, 1, subject=A)
    await index.put_local_manifest("team/app", manifest, [A], "v1", "registry.internal")
    await mirrorjournal.save_local(tmp_path, index)
    await index.close()
    (tmp_path / "index.sqlite").unlink()
    fresh = await SqliteIndex.open(tmp_path / "index.sqlite")
    assert await mirrorjournal.restore(tmp_path, fresh) == 3
    assert await fresh.local_tag("team/app", "v1") == B
    assert await fresh.local_blob("team/app", A) == 1
    assert [m.digest for m in await fresh.local_referrers("team/app", A)] == [B]
    assert {str(A), str(B)} <= await fresh.pinned_digests()
    assert await mirrorjournal.restore(tmp_path, fresh) == 0  # it has rows: left alone
    await fresh.close()


async def test_an_unreadable_journal_is_moved_aside_not_overwritten(tmp_path: Path) -> None:
    (tmp_path / mirrorjournal.LOCAL_JOURNAL_NAME).write_text('{"version": 1, "tab')
    index = await SqliteIndex.open(tmp_path / "index.sqlite")
    assert await mirrorjournal.restore(tmp_path, index) == 0
    await mirrorjournal.save_local(tmp_path, index)  # the next save of an empty index
    kept = list(tmp_path.glob(f"{mirrorjournal.LOCAL_JOURNAL_NAME}.unreadable-*"))
    assert len(kept) == 1 and kept[0].read_text() == '{"version": 1, "tab'
    await index.close()
