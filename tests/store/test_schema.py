"""The index schema and its migrations, on a real database."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from appliance.cache.ports import TagRow
from appliance.oci.digest import Digest
from appliance.store.index import SqliteIndex

MIRROR_TABLES = ("mirror_tags", "mirror_history", "mirror_checks", "mirror_runs",
                 "mirror_budgets", "mirror_added", "mirror_requests", "mirror_referrers",
                 "mirror_state")  # fmt: skip
LOCAL_TABLES = ("local_blobs", "local_manifests", "local_tags")


def rewind(path: Path, version: int) -> None:
    """The database as an older regcache left it: schema `version` (3, 4 or 5)."""
    db = sqlite3.connect(path)
    for table in (*(MIRROR_TABLES if version < 5 else ()), *LOCAL_TABLES):
        db.execute(f"DROP TABLE {table}")
    db.execute(f"PRAGMA user_version = {version}")
    db.commit()
    db.close()


async def test_index_schema_is_migrated_once_and_in_wal(tmp_path: Path) -> None:
    index = await SqliteIndex.open(tmp_path / "index.sqlite")
    assert await index.schema_version() == 6
    await index.close()
    index = await SqliteIndex.open(tmp_path / "index.sqlite")  # reopening migrates nothing
    assert await index.schema_version() == 6
    await index.close()
    mode = sqlite3.connect(tmp_path / "index.sqlite").execute("PRAGMA journal_mode").fetchone()
    assert mode == ("wal",)


async def test_migration_4_drops_sources_no_tag_vouches_for(tmp_path: Path) -> None:
    """Before the per-digest gate a refused or foreign request could add a source row."""
    path = tmp_path / "index.sqlite"
    index = await SqliteIndex.open(path)
    tagged, child, stray = (Digest.of(x) for x in (b"tagged", b"child", b"stray"))
    await index.add_manifest(child, 1, "m", [], ("docker.io", "library/x"))
    await index.add_manifest(tagged, 1, "i", [child], ("docker.io", "library/x"))
    await index.add_manifest(stray, 1, "m", [], ("docker.io", "library/x"))
    await index.set_tag("docker.io", "library/x", "v1", "k", TagRow(tagged, "i", 1, 1.0))
    await index.set_public_status("docker.io", "library/x", True, 1.0)
    await index.close()
    rewind(path, 3)
    index = await SqliteIndex.open(path)
    assert [d for _, _, d in await index.sources()] == [str(tagged)]
    assert await index.member_paths("docker.io", "library/x", child) == [(tagged,)]  # checked
    assert await index.public_status("docker.io", "library/x") is None  # learnt anew
    await index.close()


async def test_migration_5_adds_the_mirror_tables_and_keeps_the_cache(tmp_path: Path) -> None:
    path = tmp_path / "index.sqlite"
    index = await SqliteIndex.open(path)
    digest = Digest.of(b"m")
    await index.add_manifest(digest, 1, "m", [], ("docker.io", "library/x"))
    await index.set_tag("docker.io", "library/x", "v1", "k", TagRow(digest, "m", 1, 1.0))
    await index.close()
    rewind(path, 4)
    index = await SqliteIndex.open(path)
    assert await index.schema_version() == 6
    assert await index.tags() == [("docker.io", "library/x", "v1", str(digest))]
    assert await index.mirrored_tags() == [] and await index.mirror_generation() == 0
    await index.close()


async def test_migration_6_adds_the_local_registry_and_keeps_the_mirror(tmp_path: Path) -> None:
    path = tmp_path / "index.sqlite"
    index = await SqliteIndex.open(path)
    digest = Digest.of(b"m")
    await index.add_manifest(digest, 1, "m", [], ("docker.io", "library/x"))
    await index.add_entry("docker.io/library/x:1", "network")
    await index.close()
    rewind(path, 5)
    index = await SqliteIndex.open(path)
    assert await index.schema_version() == 6
    assert await index.added_entries() == [("docker.io/library/x:1", "network")]
    assert await index.local_repositories() == [] and await index.local_tags("x") is None
    await index.close()
