"""The SQLite index on the pull hot path: tags, batched revalidations, public status,
what was pulled where; on a real database."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from appliance.cache.ports import TagRow
from appliance.oci.digest import Digest
from appliance.store.index import SqliteIndex
from tests.store.full import FullDiskIndex


async def test_tag_history_keeps_replaced_digests(tmp_path: Path) -> None:
    index = await SqliteIndex.open(tmp_path / "index.sqlite")
    a, b = Digest.of(b"a"), Digest.of(b"b")
    for digest, now in ((a, 1.0), (a, 2.0), (b, 3.0)):
        await index.set_tag("docker.io", "library/x", "latest", "k", TagRow(digest, "t", 1, now))
    row = await index.tag("docker.io", "library/x", "latest", "k")
    assert row is not None and row.digest == b and row.validated_s == 3.0
    assert await index.tag_history("docker.io", "library/x", "latest") == [a]
    await index.add_manifest(a, 1, "t", [], ("docker.io", "library/x"))
    index.touch(a)
    assert await index.hits(a) == 1 and await index.manifest_type(a) == "t"
    await index.close()


async def test_unchanged_revalidations_are_batched_and_reach_the_database(tmp_path: Path) -> None:
    """Rows kept in memory for hits must agree with what another connection reads."""
    path = tmp_path / "index.sqlite"
    index = await SqliteIndex.open(path)
    a, b = Digest.of(b"a"), Digest.of(b"b")

    def on_disk() -> list[tuple[str, float]]:
        with sqlite3.connect(path) as other:
            return [
                (str(d), float(v)) for d, v in other.execute("SELECT digest, validated_s FROM tags")
            ]

    await index.set_tag("docker.io", "library/x", "latest", "k", TagRow(a, "t", 1, 1.0))
    assert on_disk() == [(str(a), 1.0)]  # a new mapping is committed at once
    await index.set_tag("docker.io", "library/x", "latest", "k", TagRow(a, "t", 1, 2.0))
    row = await index.tag("docker.io", "library/x", "latest", "k")
    assert row is not None and row.validated_s == 2.0
    assert on_disk() == [(str(a), 1.0)]  # same digest: only the time moved, batched
    await index.set_tag("docker.io", "library/x", "latest", "k", TagRow(b, "t", 1, 3.0))
    await index.flush()  # the batched time of the old digest must not reach the new row
    assert on_disk() == [(str(b), 3.0)]
    await index.set_tag("docker.io", "library/x", "latest", "k", TagRow(b, "t", 1, 4.0))
    assert on_disk() == [(str(b), 3.0)]
    await index.flush()
    assert on_disk() == [(str(b), 4.0)]

    await index.add_manifest(b, 1, "t", [], ("docker.io", "library/x"))
    assert (await index.blob(b)) is not None and await index.manifest_type(b) == "t"
    assert await index.delete([(str(b), float("inf"))]) == [(str(b), 1)]
    # Deleted here: not answered from memory any more, and its tag went with it.
    assert await index.blob(b) is None and await index.manifest_type(b) is None
    assert await index.tag("docker.io", "library/x", "latest", "k") is None
    await index.close()


async def test_only_public_status_is_kept(tmp_path: Path) -> None:
    index = await SqliteIndex.open(tmp_path / "index.sqlite")
    assert await index.public_status("ghcr.io", "org/x") is None
    await index.set_public_status("ghcr.io", "org/x", True, 123.0)
    assert await index.public_status("ghcr.io", "org/x") == (True, 123.0)
    await index.set_public_status("ghcr.io", "org/x", False, 456.0)  # forgotten, not a row
    assert await index.public_status("ghcr.io", "org/x") is None
    await index.close()


async def test_member_paths_follow_references_from_what_was_pulled_there(tmp_path: Path) -> None:
    index = await SqliteIndex.open(tmp_path / "index.sqlite")
    top, child, layer, other = (Digest.of(x) for x in (b"index", b"manifest", b"layer", b"o"))
    await index.add_manifest(child, 1, "m", [layer], ("ghcr.io", "org/elsewhere"))
    await index.add_manifest(top, 1, "i", [child], ("ghcr.io", "org/x"))
    assert await index.member_paths("ghcr.io", "org/x", top) == [()]
    assert await index.member_paths("ghcr.io", "org/x", child) == [(top,)]
    assert await index.member_paths("ghcr.io", "org/x", layer) == [(top, child)]
    assert await index.member_paths("ghcr.io", "org/x", other) == []
    assert await index.member_paths("ghcr.io", "org/y", layer) == []
    assert await index.member_paths("quay.io", "org/x", top) == []
    await index.close()


async def test_a_batch_that_cannot_be_written_does_not_stop_close(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    before = set(threading.enumerate())
    index = await FullDiskIndex.open(tmp_path / "index.sqlite")
    digest = Digest.of(b"a")
    await index.add_blob(digest, 1, None)
    index.touch(digest)
    index.count_served("docker.io", 1, 0)
    index.full = True
    await index.close()  # a shutdown on a full disk: the batch is let go, the file closed
    assert index.failed == 1
    assert any("index flush-failed" in r.getMessage() for r in caplog.records)
    for thread in set(threading.enumerate()) - before:
        thread.join(timeout=10)  # the connection's worker thread ends (or hangs a stop)
        assert not thread.is_alive(), thread
    check = sqlite3.connect(tmp_path / "index.sqlite")
    try:  # nothing half-written: the row as added, the access not counted
        assert check.execute("SELECT hits FROM blobs").fetchall() == [(0,)]
    finally:
        check.close()
