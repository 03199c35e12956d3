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
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from appliance.kit.durable import fsync_dir
from appliance.oci.digest import Digest
from appliance.oci.manifest import references, sniff_manifest_type
from appliance.store.files import FileBlobStore
from appliance.store.index import SqliteIndex

log = logging.getLogger(__name__)

INDEX_NAME = "index.sqlite"
_MAX_MANIFEST_BYTES = 4 << 20


@dataclass(slots=True)
class Reconciliation:
    temp_removed: int = 0
    rows_removed: int = 0
    reindexed: int = 0
    quarantined: int = 0
    backfilled: int = 0
    files: int = 0
    index_rebuilt: bool = False
    seconds: float = 0.0


class _Corrupt(Exception):
    pass


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


async def reconcile(index: SqliteIndex, files: FileBlobStore, *, at_start: bool) -> Reconciliation:
    """Make the index agree with the files. `at_start`: also remove fill temp files
    (never while a service runs fills)."""
    started = time.monotonic()
    report = Reconciliation()
    if at_start:
        report.temp_removed = files.prepare()
    rows = await index.sizes()
    found = await asyncio.to_thread(_scan, files)
    report.files = len(found)
    missing = [d for d in rows if d not in found]
    for path, digest, size in found.values():
        if digest is None:
            await asyncio.to_thread(files.move_to_quarantine, path, "not a digest path")
            report.quarantined += 1
            continue
        expected = rows.get(str(digest))
        if expected is not None:
            if size != expected:
                missing.append(str(digest))
                why = f"size {size} but indexed as {expected}"
                await asyncio.to_thread(files.move_to_quarantine, path, why)
                report.quarantined += 1
            continue
        if not await asyncio.to_thread(files.hashes_to_name, path, digest):
            await asyncio.to_thread(files.move_to_quarantine, path, "content does not hash to name")
            report.quarantined += 1
            continue
        await index.restore(digest, size, await asyncio.to_thread(_manifest, path, size))
        report.reindexed += 1
    removed = await index.delete([(d, math.inf) for d in missing], referenced=True)
    report.rows_removed = len(removed)
    for text in await index.manifests_without_refs():
        digest = Digest.parse(text)
        path = files.path_for(digest)
        try:
            body = await asyncio.to_thread(path.read_bytes)
        except FileNotFoundError:
            continue
        await index.set_references(digest, references(body))
        report.backfilled += 1
    report.seconds = time.monotonic() - started
    if report.temp_removed or report.rows_removed or report.reindexed or report.quarantined:
        log.warning(
            "store reconciled files=%d temp_removed=%d rows_removed=%d reindexed=%d"
            " quarantined=%d s=%.2f",
            report.files, report.temp_removed, report.rows_removed, report.reindexed,
            report.quarantined, report.seconds,
        )  # fmt: skip
    return report


def _scan(files: FileBlobStore) -> dict[str, tuple[Path, Digest | None, int]]:
    found: dict[str, tuple[Path, Digest | None, int]] = {}
    for path, digest in files.walk():
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            continue
        found[str(digest) if digest is not None else str(path)] = (path, digest, size)
    return found


def _manifest(path: Path, size: int) -> tuple[str, list[Digest]] | None:
    """(media type, references) if the file reads as a manifest."""
    if size > _MAX_MANIFEST_BYTES:
        return None
    body = path.read_bytes()
    media_type = sniff_manifest_type(body)
    return None if media_type is None else (media_type, references(body))
