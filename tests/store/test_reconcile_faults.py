"""Reconciliation over a failing disk, on a real store: a file that cannot be read (EIO of
a bad sector), stat'ed or moved to quarantine (ENOSPC) is skipped, logged with its path
and errno, and left for the next reconciliation; the walk goes on with the others."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from appliance.oci.digest import Digest
from appliance.store.files import FileBlobStore
from appliance.store.reconcile import INDEX_NAME, Progress, reconcile
from tests.store.stock import Store, unindexed

EIO = OSError(errno.EIO, os.strerror(errno.EIO))


def skipped_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if "reconcile-skipped" in r.getMessage() and r.levelno == logging.ERROR
    ]


def unreadable(files: FileBlobStore, monkeypatch: pytest.MonkeyPatch, *bad: Path) -> None:
    """Hashing the files at `bad` fails as a bad sector does; the others hash as ever."""
    real = files.hashes_to_name

    def hashes_to_name(path: Path, digest: Digest) -> bool:
        if path in bad:
            raise EIO
        return real(path, digest)

    monkeypatch.setattr(files, "hashes_to_name", hashes_to_name)


async def test_a_file_that_cannot_be_read_is_skipped_and_the_others_are_indexed(
    store: Store, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="appliance.store.reconcile")
    digests = [unindexed(store.files, f"layer {i}".encode() * 100) for i in range(5)]
    bad = sorted(digests, key=str)[1:3]  # the walk meets them between good ones
    bad_paths = [store.files.path_for(d) for d in bad]
    unreadable(store.files, monkeypatch, *bad_paths)
    progress = Progress()
    report = await reconcile(store.index, store.files, at_start=True, progress=progress)
    assert (report.reindexed, report.skipped, report.quarantined) == (3, 2, 0)
    assert store.rows() == {str(d) for d in digests if d not in bad}
    assert all(p.exists() for p in bad_paths)  # left where they are, not quarantined
    assert not store.files.quarantine.exists() or list(store.files.quarantine.iterdir()) == []
    assert progress.checked == progress.of == 5
    lines = skipped_lines(caplog)
    assert len(lines) == 1, lines  # a failing disk fails many: one line per errno a minute
    assert f"path={bad_paths[0]} errno=EIO doing=hash" in lines[0]
    assert "skipped=2" in caplog.text  # the summary counts them all
    caplog.clear()
    again = await reconcile(store.index, store.files, at_start=True)
    assert again.skipped == 2 and len(skipped_lines(caplog)) == 1  # each run says so again
    monkeypatch.undo()  # the sectors are readable again (remapped, or the file rewritten)
    healed = await reconcile(store.index, store.files, at_start=True)
    assert (healed.reindexed, healed.skipped) == (2, 0)
    assert store.rows() == {str(d) for d in digests}


async def test_a_file_whose_quarantine_note_cannot_be_written_stays_where_it_was(
    store: Store, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="appliance.store.reconcile")
    damaged = store.files.path_for(Digest.of(b"what the name says"))
    damaged.parent.mkdir(parents=True, exist_ok=True)
    damaged.write_bytes(b"something else")
    stray = store.root / "blobs" / "sha256" / "stray.txt"
    stray.write_text("x")
    good = unindexed(store.files, b"a good layer")
    real = Path.write_text

    def write_text(self: Path, *args: Any, **kwargs: Any) -> int:
        if self.name.endswith(".why"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", write_text)
    report = await reconcile(store.index, store.files, at_start=True)
    assert (report.quarantined, report.skipped, report.reindexed) == (0, 2, 1)
    assert damaged.read_bytes() == b"something else" and stray.read_text() == "x"
    assert list(store.files.quarantine.iterdir()) == []  # no file without its note
    assert store.rows() == {str(good)}
    lines = skipped_lines(caplog)  # the stray first (moved before any re-hash), then throttled
    assert len(lines) == 1 and f"path={stray} errno=ENOSPC doing=quarantine" in lines[0]
    monkeypatch.undo()  # room again
    again = await reconcile(store.index, store.files, at_start=True)
    assert (again.quarantined, again.skipped) == (2, 0)
    assert not damaged.exists() and not stray.exists()
    assert len(list(store.files.quarantine.glob("*.why"))) == 2


async def test_a_file_that_cannot_be_stated_keeps_its_row(
    store: Store, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Its inode is on the bad sector: the walk lists it, but neither it nor the check for
    a row's file can stat it. Its row is not dropped as if the file were gone."""
    caplog.set_level(logging.INFO, logger="appliance.store.reconcile")
    kept = await store.blob(b"kept")
    bad = await store.blob(b"on a bad sector")
    lost = unindexed(store.files, b"lost its row")
    bad_path = store.files.path_for(Digest.parse(bad))
    real = Path.stat

    def stat(self: Path, **kwargs: Any) -> os.stat_result:
        if self == bad_path:
            raise EIO
        return real(self, **kwargs)

    monkeypatch.setattr(Path, "stat", stat)
    report = await reconcile(store.index, store.files, at_start=False)
    assert (report.rows_removed, report.reindexed, report.skipped) == (0, 1, 1)
    assert store.rows() == {kept, bad, str(lost)}
    assert f"path={bad_path} errno=EIO doing=stat" in "\n".join(skipped_lines(caplog))


async def test_a_manifest_whose_references_cannot_be_read_is_backfilled_later(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    layer = await store.blob(b"layer")
    manifest = await store.manifest([layer])
    with contextlib.closing(sqlite3.connect(store.root / INDEX_NAME)) as db, db:
        db.execute("UPDATE manifests SET refs_indexed = 0")  # stored before schema 3
    path = store.files.path_for(Digest.parse(manifest))
    real = Path.read_bytes

    def read_bytes(self: Path) -> bytes:
        if self == path:
            raise EIO
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    report = await reconcile(store.index, store.files, at_start=False)
    assert (report.backfilled, report.skipped) == (0, 1)
    monkeypatch.undo()
    again = await reconcile(store.index, store.files, at_start=False)
    assert (again.backfilled, again.skipped) == (1, 0)
