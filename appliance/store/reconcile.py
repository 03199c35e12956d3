"""Startup reconciliation: the blob files are the truth, the index is made to agree.

- A temp file of an interrupted fill is removed (only at start: none is in flight then).
- An index row whose file is missing, or whose file has another size, is removed; such a
  file is quarantined (a file under `blobs/` is only ever placed there verified, so a
  wrong size means damage).
- A file without a row is re-hashed: re-indexed if it matches its name (a manifest with
  its references), quarantined if not. Stray files that name no digest are quarantined.
- An index that cannot be opened or fails `PRAGMA integrity_check` is moved aside and
  rebuilt from the files. Tag mappings are not in the files: those tags are simply
  revalidated upstream on their next pull.
- A file that cannot be read or moved (EIO of a bad sector, ENOSPC writing its
  quarantine note) is skipped, logged and left as it is for the next reconciliation; its
  row, if any, stays. One bad file must not stop the walk, nor regcache.

At start it runs in the background while regcache already serves (runtime/startup.py),
reporting its `Progress`; `regcache cache gc` runs it beside a serving regcache.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import math
import os
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path

from appliance.kit.durable import fsync_dir
from appliance.kit.logfields import Fields, fields
from appliance.kit.logthrottle import LogThrottle
from appliance.kit.units import human_size
from appliance.oci.digest import Digest
from appliance.oci.manifest import references, sniff_manifest_type
from appliance.store.files import FileBlobStore
from appliance.store.index import SqliteIndex

log = logging.getLogger(__name__)

INDEX_NAME = "index.sqlite"
_MAX_MANIFEST_BYTES = 4 << 20
_SKIP_LOG_EVERY_S = 60.0


@dataclass(slots=True)
class Progress:
    """How far a reconciliation has come, kept current by `reconcile` and read while it
    runs (start-up reports it in the log, `/readyz`, the status page and systemd)."""

    of: int | None = None
    """Files under `blobs/`; None until they are listed."""
    checked: int = 0
    """Files dealt with: found to agree with their row, re-indexed, quarantined, or
    skipped (unreadable: left for the next reconciliation)."""
    bytes: int = 0
    """Bytes re-hashed."""
    started: float = field(default_factory=time.monotonic)

    def fields(self) -> Fields:
        """`checked=N of=M bytes=B rate=R` (`of=?` while listing; rate of re-hashing)."""
        rate = self.bytes / max(time.monotonic() - self.started, 1e-3)
        return fields(
            checked=self.checked,
            of="?" if self.of is None else self.of,
            bytes=self.bytes,
            rate=human_size(rate).replace(" ", "") + "/s",
        )


@dataclass(slots=True)
class Reconciliation:
    temp_removed: int = 0
    rows_removed: int = 0
    reindexed: int = 0
    quarantined: int = 0
    skipped: int = 0
    """Files that could not be read or moved (logged), left for the next reconciliation."""
    backfilled: int = 0
    files: int = 0
    index_rebuilt: bool = False
    seconds: float = 0.0


class _Skips:
    """Files left as they are because reading or moving them failed with an OSError other
    than "gone" (EIO of a bad sector, ENOSPC): each is counted, and logged naming the file
    and errno, at most one line per errno a minute (a failing disk fails thousands). Noted
    from the walk's threads, one at a time."""

    def __init__(self) -> None:
        self.count = 0
        self._log = LogThrottle(log, interval_s=_SKIP_LOG_EVERY_S)

    def note(self, path: Path, error: OSError, doing: str) -> None:
        self.count += 1
        code = errno.errorcode.get(error.errno or 0, str(error.errno))
        self._log.log(
            logging.ERROR,
            code,
            "store reconcile-skipped %s",
            fields(path=path, errno=code, doing=doing, error=error.strerror or error,
                   action="left-for-next-reconcile"),
        )  # fmt: skip


async def open_index(root: Path) -> tuple[SqliteIndex, bool]:
    """The index under `root`; (index, True) if it had to be moved aside and recreated."""
    path = root / INDEX_NAME
    if not path.exists() and next((root / "blobs").glob("*/*/*"), None) is not None:
        log.error("store index-missing path=%s action=rebuilding-from-files", path)
        return await SqliteIndex.open(path), True
    try:
        index = await SqliteIndex.open(path)
    except sqlite3.DatabaseError as e:
        problem = f"cannot be opened: {e}"
    else:
        try:
            result = await index.integrity_check()
        except sqlite3.DatabaseError as e:
            result = str(e)
        if result == "ok":
            return index, False
        await index.close()
        problem = f"fails integrity_check: {result[:300]}"
    aside = root / f"{INDEX_NAME}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}"
    for suffix in ("", "-wal", "-shm"):
        source = path.with_name(path.name + suffix)
        if source.exists():
            os.replace(source, aside.with_name(aside.name + suffix))
    fsync_dir(root)
    log.error(
        "store index-corrupt path=%s problem=%s moved_to=%s action=rebuilding-from-files"
        " (tags are revalidated upstream on next pull)",
        path, problem, aside,
    )  # fmt: skip
    return await SqliteIndex.open(path), True


async def reconcile(
    index: SqliteIndex,
    files: FileBlobStore,
    *,
    at_start: bool,
    progress: Progress | None = None,
) -> Reconciliation:
    """Make the index agree with the files. `at_start`: also remove fill temp files
    (never while a service runs fills). `progress` is kept current as files are checked.

    Every step runs off the event loop (listing, hashing, renames in threads; rows through
    the index's own thread), so it can run while regcache serves. It is safe beside fills
    committing (`regcache cache gc` next to a serving regcache, or two reconciliations at
    once): a fill only ever places a verified file, and renames it into place before it
    adds its row. So a file is quarantined only while it is still the very file found
    damaged, a row is dropped only while its file is still absent, and a file a fill
    indexed meanwhile is not counted as re-indexed.

    A file that cannot be read or moved is skipped (`Reconciliation.skipped`, logged); an
    error of the index (a full disk: "database or disk is full") fails the whole."""
    progress = progress if progress is not None else Progress()
    started = time.monotonic()
    report = Reconciliation()
    skips = _Skips()
    if at_start:
        report.temp_removed = await asyncio.to_thread(files.prepare)
    rows = await index.sizes()
    plan = await asyncio.to_thread(_plan, files, rows, skips)
    report.files = progress.of = plan.files
    progress.checked = plan.agreed + skips.count
    if plan.damaged:  # their rows before their files, like every removal
        damaged = [(str(digest), math.inf) for _, digest, _ in plan.damaged]
        report.rows_removed += len(await index.delete(damaged, referenced=True))
    for path, _, (inode, why) in [*plan.strays, *plan.damaged]:
        report.quarantined += await asyncio.to_thread(_quarantine, files, path, inode, why, skips)
        progress.checked += 1
    for path, digest, size in plan.unindexed:
        await _reindex(index, files, (path, digest, size), report, skips)
        progress.checked += 1
        progress.bytes += size
    missing = await asyncio.to_thread(_still_missing, files, plan.missing, skips)
    report.rows_removed += len(
        await index.delete([(d, math.inf) for d in missing], referenced=True)
    )
    report.backfilled = await _backfill(index, files, skips)
    report.skipped = skips.count
    report.seconds = time.monotonic() - started
    _log_changes(report)
    return report


def _log_changes(report: Reconciliation) -> None:
    r = report
    if r.temp_removed or r.rows_removed or r.reindexed or r.quarantined or r.skipped:
        log.warning(
            "store reconciled files=%d temp_removed=%d rows_removed=%d reindexed=%d"
            " quarantined=%d skipped=%d s=%.2f",
            r.files, r.temp_removed, r.rows_removed, r.reindexed, r.quarantined, r.skipped,
            r.seconds,
        )  # fmt: skip


@dataclass(slots=True)
class _Plan:
    """What the files say, against the rows read before the listing."""

    files: int = 0
    agreed: int = 0
    """Files whose row agrees: nothing to do."""
    strays: list[tuple[Path, None, tuple[int, str]]] = field(default_factory=list)
    """Files that name no digest: (path, None, (inode, why))."""
    damaged: list[tuple[Path, Digest, tuple[int, str]]] = field(default_factory=list)
    """Files whose size is not their row's: (path, digest, (inode, why))."""
    unindexed: list[tuple[Path, Digest, int]] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    """Rows whose file was not found."""


def _plan(files: FileBlobStore, rows: dict[str, int], skips: _Skips) -> _Plan:
    """List `blobs/` and sort every file into what must be done with it (in a thread:
    a store holds many files). A file that cannot be stat'ed is skipped, its row kept."""
    plan = _Plan()
    found: set[str] = set()
    for path, digest in files.walk():
        try:
            stat = path.stat()
        except FileNotFoundError:
            continue
        except OSError as e:
            plan.files += 1
            skips.note(path, e, "stat")
            if digest is not None:
                found.add(str(digest))  # its row stays until a reconciliation can read it
            continue
        plan.files += 1
        if digest is None:
            plan.strays.append((path, None, (stat.st_ino, "not a digest path")))
            continue
        found.add(str(digest))
        expected = rows.get(str(digest))
        if expected is None:
            plan.unindexed.append((path, digest, stat.st_size))
        elif stat.st_size != expected:
            why = f"size {stat.st_size} but indexed as {expected}"
            plan.damaged.append((path, digest, (stat.st_ino, why)))
        else:
            plan.agreed += 1
    plan.missing = [d for d in rows if d not in found]
    return plan


async def _reindex(
    index: SqliteIndex,
    files: FileBlobStore,
    entry: tuple[Path, Digest, int],
    report: Reconciliation,
    skips: _Skips,
) -> None:
    """Re-hash a file found (`entry`: path, digest, size) without a row: indexed if it
    matches its name, else moved to quarantine (unless a fill replaced it meanwhile)."""
    path, digest, size = entry
    examined = await asyncio.to_thread(_examine, files, entry, skips)
    if examined is None:
        return  # gone meanwhile (another reconciliation, `regcache cache rm`), or skipped
    inode, good, manifest = examined
    if not good:
        why = "content does not hash to name"
        report.quarantined += await asyncio.to_thread(_quarantine, files, path, inode, why, skips)
    elif await index.restore(digest, size, manifest):
        report.reindexed += 1


def _examine(
    files: FileBlobStore, entry: tuple[Path, Digest, int], skips: _Skips
) -> tuple[int, bool, tuple[str, list[Digest]] | None] | None:
    """(inode, whether it hashes to its name, manifest) of a file, streamed; None if it
    is gone or cannot be read (skipped). A file that hashes wrong is the one `inode`
    names: whatever replaced it in between was a verified fill."""
    path, digest, size = entry
    try:
        inode = path.stat().st_ino
        if not files.hashes_to_name(path, digest):
            return inode, False, None
        return inode, True, _manifest(path, size)
    except FileNotFoundError:
        return None
    except OSError as e:
        skips.note(path, e, "hash")
        return None


def _quarantine(files: FileBlobStore, path: Path, inode: int, why: str, skips: _Skips) -> int:
    """1 if the file at `path` was still the one examined (`inode`) and is now in
    quarantine; 0 if a fill replaced it (a verified file: it stays), it is gone, or it
    could not be moved (skipped: it stays where it is, without a row)."""
    try:
        if path.stat().st_ino != inode:
            return 0
        files.move_to_quarantine(path, why)
    except FileNotFoundError:
        return 0
    except OSError as e:
        skips.note(path, e, "quarantine")
        return 0
    return 1


def _still_missing(files: FileBlobStore, digests: list[str], skips: _Skips) -> list[str]:
    """Those of `digests` whose file is still absent: one committed since the listing
    keeps its row, and so does one that cannot be stat'ed (skipped)."""
    missing = []
    for text in digests:
        digest = Digest.parse(text)
        try:
            if files.size_of(digest) is None:
                missing.append(text)
        except OSError as e:
            skips.note(files.path_for(digest), e, "stat")
    return missing


async def _backfill(index: SqliteIndex, files: FileBlobStore, skips: _Skips) -> int:
    """References of manifests stored before schema 3; how many were backfilled."""
    backfilled = 0
    for text in await index.manifests_without_refs():
        digest = Digest.parse(text)
        path = files.path_for(digest)
        try:
            body = await asyncio.to_thread(path.read_bytes)
        except FileNotFoundError:
            continue
        except OSError as e:
            skips.note(path, e, "read")
            continue
        await index.set_references(digest, references(body))
        backfilled += 1
    return backfilled


def _manifest(path: Path, size: int) -> tuple[str, list[Digest]] | None:
    """(media type, references) if the file reads as a manifest."""
    if size > _MAX_MANIFEST_BYTES:
        return None
    body = path.read_bytes()
    media_type = sniff_manifest_type(body)
    return None if media_type is None else (media_type, references(body))
